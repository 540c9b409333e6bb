"""Two checkouts of rnnlab against each other, side by side: bench.py's rnnlab worker run from each (its
PYTHONPATH set to the checkout), their timed passes taken in turn with bench.py's pause, the ratio the median
of the rounds' ratios (B ÷ A: > 1, B is faster).

    python experiments/benchmarks/ab.py ../before . --points lstm:64:32,gru:64:128 --rounds 9
    python experiments/benchmarks/ab.py ../before . --points lstm:256:32 --interleaved 8   # finer, in one process

A worker trains as bench.py's does (forward, backward, clip, Adam, names batches, 2 threads); each pass is one
over the point's batches. For a change that is not yet committed: check the old commit out elsewhere
(``git worktree add ../before HEAD``) and compare it with the working tree.

``--interleaved P``: both checkouts in this one process instead, timed batch by batch in turn over P passes.
On a shared 2-core VM whose speed drifts by 10–25 % within a minute, the rounds of whole passes spread over
0.8–1.2 and a 2 % change is invisible. Here both checkouts are imported (as the packages ``rnnlab_a`` and
``rnnlab_b``: the engine imports itself relatively), each trains its own model (the same weights, batches
and optimizer as bench.py's worker), and every batch is timed in both, one right after the other (the first
of the pair alternating): a pair sees the same machine within milliseconds. The result is the median of the
pairs' ratios, with their quartiles. Each model keeps its own unit-split worker process, if it splits; both
then hold BLAS at one thread in this process, as each would alone.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench


def compare(a: str, b: str, cell: str, H: int, B: int, rounds: int) -> list[float]:
    """The rounds' ratios B ÷ A of trained characters per second at one point."""
    steps, workers = bench.steps_for(H, B), []
    for checkout in (a, b):
        os.environ["PYTHONPATH"] = str(Path(checkout).resolve())
        workers.append(bench.Worker("rnnlab", cell, H, B, "float32", steps))
    a, b = workers
    ratios = [got[b]["chars_per_sec"] / got[a]["chars_per_sec"] for got in bench.take_turns(workers, rounds)]
    for w in workers:
        w.end()
    return ratios


def load(checkout: str, name: str):
    """The package rnnlab of ``checkout`` imported as ``name``."""
    root = Path(checkout).resolve() / "rnnlab"
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def interleaved(cell: str, H: int, B: int, passes: int) -> list[float]:
    """The ratios t_A / t_B (> 1: B is faster) of every batch of ``passes`` passes over the point's batches."""
    V, data = bench.batches(B, bench.steps_for(H, B))
    step_a, step_b = (bench.rnnlab_trainer(cell, H, V, "float32", package=p)[0] for p in ("rnnlab_a", "rnnlab_b"))
    for b in data[:3]:                  # warm-up: forks, workspaces, first-touch
        step_a(b)
        step_b(b)
    def seconds(step, b):
        t0 = time.perf_counter()
        step(b)
        return time.perf_counter() - t0
    ratios = []
    for p in range(passes):
        for i, b in enumerate(data):
            if (p + i) % 2 == 0:          # the first of the pair alternates
                t_a, t_b = seconds(step_a, b), seconds(step_b, b)
            else:
                t_b, t_a = seconds(step_b, b), seconds(step_a, b)
            ratios.append(t_a / t_b)
    del step_a, step_b
    gc.collect()                        # ends the models' unit-split processes, if any (as bench.py's worker)
    return ratios


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the checkout to compare against (a directory holding rnnlab/)")
    ap.add_argument("b", help="the checkout to measure")
    ap.add_argument("--points", default="lstm:64:32", help="cell:H:B,… (default: the default job's)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--interleaved", type=int, metavar="PASSES", default=0,
                    help="both checkouts in this process, batch by batch in turn, over this many passes")
    args = ap.parse_args(argv)
    for checkout in (args.a, args.b):
        if not (Path(checkout) / "rnnlab" / "__init__.py").is_file():
            ap.error(f"{checkout!r} holds no rnnlab/ package: give the root of a checkout")
    if args.interleaved:
        load(args.a, "rnnlab_a")
        load(args.b, "rnnlab_b")
    for point in args.points.split(","):
        cell, H, B = point.split(":")
        if args.interleaved:
            r = interleaved(cell, int(H), int(B), args.interleaved)
            q1, med, q3 = statistics.quantiles(r, n=4)
            print(f"{point}: A/B time median {med:.3f} (quartiles {q1:.3f}–{q3:.3f}, {len(r)} batch pairs)",
                  flush=True)
            continue
        ratios = compare(args.a, args.b, cell, int(H), int(B), args.rounds)
        print(f"{point}: B/A median {statistics.median(ratios):.3f}  rounds "
              + " ".join(f"{x:.2f}" for x in ratios), flush=True)


if __name__ == "__main__":
    main()
