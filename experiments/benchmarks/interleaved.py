"""Two checkouts of rnnlab in one process, their training steps taken batch by batch in turn: B ÷ A.

    python experiments/benchmarks/interleaved.py ../before . --points lstm:256:32,lstm:512:128 --passes 8

``ab.py`` compares two worker processes that take whole passes in turn; on a shared 2-core VM whose speed
drifts by 10–25 % within a minute, its rounds spread over 0.8–1.2 and a 2 % change is invisible. Here both
checkouts are imported into one process (as the packages ``rnnlab_a`` and ``rnnlab_b``: the engine imports
itself relatively), each trains its own model (the same initial weights, batches and optimizer as
bench.py's worker), and every batch is timed in both, one right after the other (the first of the pair
alternating). A pair sees the same machine within milliseconds, so the ratio of its two times is
free of the drift; the result is the median over all pairs, with the quartiles of the pairs' ratios.

Each model keeps its own unit-split worker process, if it splits; both then hold BLAS at one thread in
this process (``threads.hold_one_blas_thread``), as each would alone.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import bench


def load(checkout: str, name: str):
    """The package rnnlab of ``checkout`` imported as ``name``."""
    root = Path(checkout).resolve() / "rnnlab"
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def trainer(pkg: str, cell: str, H: int, V: int):
    """bench.py's rnnlab step (Adam 0.001, norm clip 5, threads 2) built from the package ``pkg``."""
    model, optim, clipping = (importlib.import_module(f"{pkg}.{m}") for m in ("model", "optim", "clipping"))
    lm = model.CharLM(V, cell, H, dtype="float32", threads=int(bench.THREADS))
    params = lm.init_params(np.random.default_rng(0))
    opt, clip = optim.Adam(0.001), clipping.NormClip(5.0)

    def step(b):
        loss, grads, _ = lm.loss_and_grads(params, b.x, b.y, b.mask)
        clip(grads)
        lm.update(opt, params, grads)
        return loss
    return step, lm


def compare(cell: str, H: int, B: int, passes: int) -> list[float]:
    """The ratios t_A / t_B (> 1: B is faster) of every batch of ``passes`` passes over the point's batches."""
    V, data = bench.batches(B, bench.steps_for(H, B))
    (step_a, lm_a), (step_b, lm_b) = trainer("rnnlab_a", cell, H, V), trainer("rnnlab_b", cell, H, V)
    for b in data[:3]:                  # warm-up: forks, workspaces, first-touch
        step_a(b)
        step_b(b)
    ratios = []
    for p in range(passes):
        for i, b in enumerate(data):
            first_a = (p + i) % 2 == 0
            times = {}
            for which, step in ((("a", step_a), ("b", step_b)) if first_a else (("b", step_b), ("a", step_a))):
                t0 = time.perf_counter()
                step(b)
                times[which] = time.perf_counter() - t0
            ratios.append(times["a"] / times["b"])
    lm_a.close()
    lm_b.close()
    return ratios


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the checkout to compare against (a directory holding rnnlab/)")
    ap.add_argument("b", help="the checkout under test")
    ap.add_argument("--points", default="lstm:256:32", help="cell:H:B,… (float32)")
    ap.add_argument("--passes", type=int, default=8, help="passes over each point's batches")
    args = ap.parse_args(argv)
    load(args.a, "rnnlab_a")
    load(args.b, "rnnlab_b")
    for point in args.points.split(","):
        cell, H, B = point.split(":")
        r = compare(cell, int(H), int(B), args.passes)
        q1, med, q3 = statistics.quantiles(r, n=4)
        print(f"{point}: B faster by A/B median {med:.3f} (quartiles {q1:.3f}–{q3:.3f}, {len(r)} batch pairs)",
              flush=True)


if __name__ == "__main__":
    main()
