"""Training throughput of rnnlab against PyTorch on the CPU, side by side in one run.

    python experiments/benchmarks/bench.py                 # the full grid → results.json, results.md
    python experiments/benchmarks/bench.py --quick         # three points, for a smoke test (printed only)

Both frameworks train the same model on the same batches: one-hot input → cell → linear output →
masked softmax cross-entropy, Adam, global-norm clip 5, 2 threads. A batch is B names of the built-in
dataset padded to the longest and masked. Throughput is trained characters per second (forward,
backward, clipping, optimizer step) of a timed pass over the point's batches. Each framework runs in its
own process, so that its peak memory (max RSS) is its own, and the two take their timed passes in turn
(rnnlab, PyTorch, PyTorch, rnnlab, …): a ratio is the median over the rounds of the ratio within a round,
two passes seconds apart, since a shared machine's speed drifts from minute to minute. The machine's
bound for a point is the matrix-multiply rate NumPy's BLAS reaches here (measured just before each of
rnnlab's passes, in its round's ratio) divided by the FLOPs one trained
character costs in the matrix products: 3 × 2·(G·H·H + H·V), G the cell's gates (forward, and the
two products of the backward pass). "Products alone" is the ratio rnnlab would reach if its element-wise
work cost nothing: the same matrix products at their exact packed (per-step) shapes, timed on their
own, against PyTorch's throughput — a ceiling for any NumPy implementation built on these products.
rnnlab runs as the runner does, on two CPUs (CharLM threads=2): the LSTM's hidden units split between two
processes (rnnlab/split.py: each has half of every step's products, with one BLAS thread, and half of the
element-wise work; the optimizer step too), the other cells' wide batches split into shards of sequences
in two threads. "Products alone" stays the one-process ceiling: NumPy's products at the packed shapes,
whole, on two BLAS threads (the split's processes, on one thread each, can pass it at narrow steps, whose
products they compute in column blocks for OpenBLAS's small-matrix kernel: ``cells.base.StepProduct``).
Needs PyTorch (`pip install torch==2.13.0`, the CPU build).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, THREADS)

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def batches(batch_size: int, n: int, seed: int = 0):
    from rnnlab.data import load_dataset
    ds = load_dataset("lines", lowercase=True, val_fraction=0.1, seed=0)
    return len(ds.vocab), [ds.train_batch(s, batch_size, seed) for s in range(n)]


def rnnlab_trainer(cell, H, V, dtype, lr=0.001, package="rnnlab"):
    """rnnlab's model: ``(step(batch) → loss, val_loss(dataset) → validation nats/char)``; ``package``: the name
    rnnlab is imported under (ab.py's interleaved A/B loads two checkouts as two packages)."""
    import importlib
    model, optim, clipping, train = (importlib.import_module(f"{package}.{m}")
                                     for m in ("model", "optim", "clipping", "train"))
    lm = model.CharLM(V, cell, H, dtype=dtype, threads=int(THREADS))   # as the runner does (threads: one per CPU)
    params = lm.init_params(np.random.default_rng(0))
    opt, clip = optim.Adam(lr), clipping.NormClip(5.0)

    def step(b):
        loss, grads, _ = lm.loss_and_grads(params, b.x, b.y, b.mask)
        clip(grads)
        lm.update(opt, params, grads)     # as the training loop does
        return loss
    return step, lambda ds: train.evaluate(lm, params, ds, "val")


def torch_trainer(cell, H, V, dtype, lr=0.001):
    """The same model in PyTorch: ``(step(batch) → loss, val_loss(dataset) → validation nats/char)``."""
    import torch
    torch.set_num_threads(int(THREADS))
    torch.manual_seed(0)
    tdt = torch.float32 if dtype == "float32" else torch.float64
    rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](V, H).to(tdt)
    out = torch.nn.Linear(H, V).to(tdt)
    params = list(rnn.parameters()) + list(out.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    eye = torch.eye(V, dtype=tdt)
    cache = {}

    def tensors(b):
        return (torch.from_numpy(b.x), torch.from_numpy(b.y).reshape(-1),
                torch.from_numpy(b.mask).to(tdt).reshape(-1))

    def loss_of(x, y, m):
        h, _ = rnn(eye[x])
        logits = out(h).reshape(-1, V)
        return (torch.nn.functional.cross_entropy(logits, y, reduction="none") * m).sum() / m.sum()

    def step(b):
        key = id(b)   # the tensors of a batch, made once (as a DataLoader would): keep the batches alive
        if key not in cache:
            cache[key] = tensors(b)
        opt.zero_grad(set_to_none=True)
        loss = loss_of(*cache[key])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return float(loss)

    def val_loss(ds):
        total = count = 0.0
        with torch.no_grad():
            for b in ds.eval_batches("val"):
                x, y, m = tensors(b)
                total += float(loss_of(x, y, m)) * float(m.sum())
                count += float(m.sum())
        return total / count
    return step, val_loss


def worker(framework, cell, H, B, dtype, steps):
    """One framework's side of a point, driven through stdin by ``Worker``: it builds the trainer, warms it up
    and says ``{"ready": …}``; at each ``pass`` it trains once over the batches and prints that pass's chars/s
    (rnnlab: also the products alone, timed right after); at ``end`` it prints the process's peak RSS. One
    JSON line per answer on stdout."""
    V, data = batches(B, steps)
    step, _ = (rnnlab_trainer if framework == "rnnlab" else torch_trainer)(cell, H, V, dtype)
    chars = sum(float(b.mask.sum()) for b in data)
    for b in data[:3]:
        step(b)  # warm-up
    say({"ready": framework})
    loss = 0.0
    for command in sys.stdin:
        if command.strip() == "end":
            break
        t0 = time.perf_counter()
        for b in data:
            loss = step(b)
        result = {"chars_per_sec": chars / (time.perf_counter() - t0)}
        if framework == "rnnlab":
            result["products_only_chars_per_sec"] = products_only(cell, H, V, dtype, data, repeats=1)
        say(result)
    assert math.isfinite(loss)
    del step
    gc.collect()                # ends the unit split's second process, if any (rnnlab/split.py) …
    peak = sum(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    say({"peak_rss_mib": peak / 1024})   # … so that its peak counts too (summed: pages the two share count twice)


def say(message: dict) -> None:
    print(json.dumps(message), flush=True)


def step_sizes(data) -> list[list[int]]:
    """n_t of each batch: how many of its sequences are still running at each step, longest first."""
    lengths = [np.sort(b.mask.sum(axis=0).astype(int))[::-1] for b in data]
    return [[int((ls > t).sum()) for t in range(ls[0])] for ls in lengths]


def median_seconds(f, repeats=7) -> float:
    """The median time of ``f()`` over ``repeats`` calls, after one warm-up call."""
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def seconds_per_batch(op, sizes, repeats=7) -> float:
    """Median seconds per batch of ``op(s, n)`` called at every step of every batch: ``sizes`` holds the
    n_t of each batch (``step_sizes``), s is the step's first packed row."""
    def run():
        for n_t in sizes:
            s = 0
            for n in n_t:
                op(s, n)
                s += n
    return median_seconds(run, repeats) / len(sizes)


def products_only(cell, H, V, dtype, data, repeats, fastest=False):
    """Trained characters per second if the element-wise work were free: the time of the matrix
    products alone that one training step of these batches needs at the packed shapes rnnlab runs
    (per time step t, on the n_t sequences still running: h Wh forward and dz Whᵀ backward; per batch,
    the weight gradient over the real steps and the output layer's three products), each at its exact
    shape, on the same BLAS and threads (median of repeats). A batch of names starts from zeros, so the
    first step's products are skipped, as rnnlab skips them (``cells.base.zero_start``): h_0 Wh = 0, its
    rows add nothing to the weight gradient, and the gradient of the initial state is not needed. A
    ceiling for any NumPy implementation that does these products without padding. ``fastest``: each
    batch's per-step products also in the transposed layout's forms (Whᵀ hᵀ forward, Wh dzᵀ backward,
    states as columns), the faster form of each pass counted — the ceiling over both layouts."""
    rng = np.random.default_rng(0)
    G = GATES[cell]
    Wh, Wy = rng.standard_normal((H, G * H)).astype(dtype), rng.standard_normal((H, V)).astype(dtype)
    WhT = np.ascontiguousarray(Wh.T)
    chars = sum(float(b.mask.sum()) for b in data)
    B = data[0].x.shape[1]
    sizes = step_sizes(data)
    N_max = max(sum(n) for n in sizes)
    # operands made once, outside the timed loop (each batch uses its first N rows)
    hs_all, dz_all = np.ones((N_max, H), dtype), np.ones((N_max, G * H), dtype)
    hsT_all, dzT_all = np.ones((H, N_max), dtype), np.ones((G * H, N_max), dtype)
    rec, dh = np.empty((B, G * H), dtype), np.empty((B, H), dtype)
    recT, dhT = np.empty((G * H, B), dtype), np.empty((H, B), dtype)
    forwards = [lambda n_t: [np.matmul(hs_all[:n], Wh, out=rec[:n]) for n in n_t[1:]]]
    backwards = [lambda n_t: [np.matmul(dz_all[:n], WhT, out=dh[:n]) for n in reversed(n_t[1:])]]
    if fastest:
        forwards.append(lambda n_t: [np.matmul(WhT, hsT_all[:, :n], out=recT[:, :n]) for n in n_t[1:]])
        backwards.append(lambda n_t: [np.matmul(Wh, dzT_all[:, :n], out=dhT[:, :n]) for n in reversed(n_t[1:])])

    def clock(f, *args):
        t0 = time.perf_counter()
        f(*args)
        return time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        total = 0.0
        for n_t in sizes:
            N = sum(n_t)
            hs, dz = hs_all[:N], dz_all[:N]
            total += min(clock(f, n_t) for f in forwards) + min(clock(f, n_t) for f in backwards)
            t0 = time.perf_counter()
            logits = hs @ Wy
            hs.T @ logits, logits @ Wy.T, hs[n_t[0]:].T @ dz[n_t[0]:]
            total += time.perf_counter() - t0
        rates.append(chars / total)
    return statistics.median(rates)


def matmul_rate(dtype="float32", n=1024, repeats=7) -> float:
    """FLOP/s of NumPy's BLAS on square products of size n (median of repeats)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def machine() -> dict:
    """What the ratios depend on besides the code: the CPU, the SIMD extensions NumPy's loops found, and the
    BLAS with the kernels it chose (experiments/benchmarks/README.md, session 13: an AVX2 machine)."""
    from threadpoolctl import threadpool_info
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), None) if cpuinfo.exists() else None
    try:        # what numpy.show_runtime() prints as "found" (no public getter)
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        simd = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    except ImportError:
        simd = None
    blas = [{k: d.get(k) for k in ("internal_api", "version", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]
    return {"cpu": cpu, "cpus": os.cpu_count(), "numpy": np.__version__, "numpy_simd_found": simd, "blas": blas}


def flops_per_char(cell, H, V) -> float:
    return 3 * 2 * (GATES[cell] * H * H + H * V)


SETTLE = 0.5   # seconds of pause before each timed pass. Without it, a pass right after the other process's ran
               # slower: two identical rnnlab workers taking turns read 0.65–0.88 of each other in the rounds
               # where they ran second, 1.13–1.52 where first (session 14; likely the last process's threads
               # still spinning — OpenBLAS's and OpenMP's pools wait busily for a while); with it, no pattern.


class Worker:
    """A ``worker`` process of one framework for one point, waiting for its commands: ``timed_pass()``
    returns one pass's measurements, ``end()`` the process's peak RSS."""

    def __init__(self, framework, cell, H, B, dtype, steps):
        self.name = f"{framework} {cell} H{H} B{B}"
        self.log = tempfile.TemporaryFile("w+")
        cmd = [sys.executable, __file__, "--worker", framework, cell, str(H), str(B), dtype, str(steps)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=os.environ.copy())
        self.answer()                   # ready: built and warmed up

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"{self.name} failed:\n{self.log.read()[-3000:]}")
        return json.loads(line)

    def timed_pass(self) -> dict:
        self.proc.stdin.write("pass\n")
        self.proc.stdin.flush()
        return self.answer()

    def end(self) -> float:
        self.proc.stdin.write("end\n")
        self.proc.stdin.flush()
        peak = self.answer()["peak_rss_mib"]
        self.proc.wait()
        self.log.close()
        return peak


def run_point(framework, cell, H, B, dtype, steps, repeats) -> dict:
    """One framework alone at one point: the median chars/s of ``repeats`` passes, and its peak RSS."""
    w = Worker(framework, cell, H, B, dtype, steps)
    rates = [w.timed_pass()["chars_per_sec"] for _ in range(repeats)]
    return {"chars_per_sec": statistics.median(rates), "rates": rates, "peak_rss_mib": w.end()}


def take_turns(workers, rounds: int, before=None) -> list[dict]:
    """``rounds`` timed passes of each of two ``Worker``s, in turn — first, second | second, first | … — with
    the ``SETTLE`` pause before each and ``before(worker)`` (if given) just before it. Returns, per round,
    {worker: its pass's measurements}."""
    got = []
    for r in range(rounds):
        passes = {}
        for w in (workers if r % 2 == 0 else workers[::-1]):
            if before is not None:
                before(w)
            time.sleep(SETTLE)
            passes[w] = w.timed_pass()
        got.append(passes)
    return got


def side_by_side(cell, H, B, V, dtype, steps, repeats) -> dict:
    """Both frameworks at one point, each in its own process (its own peak RSS), their timed passes taken
    in turn — rnnlab, PyTorch, PyTorch, rnnlab, … — with the matmul rate measured just before each of
    rnnlab's: on a shared machine whose speed drifts from minute to minute, each ratio compares passes
    a few seconds apart, not processes minutes apart. Ratios are the medians of the rounds' ratios."""
    ours = Worker("rnnlab", cell, H, B, dtype, steps)
    theirs = Worker("torch", cell, H, B, dtype, steps)
    matmul = []

    def before(side):
        if side is ours:
            matmul.append(matmul_rate(dtype, repeats=3))
    rounds = take_turns((ours, theirs), repeats, before)
    for g, rate in zip(rounds, matmul):
        g["matmul"] = rate
    vs_torch = [g[ours]["chars_per_sec"] / g[theirs]["chars_per_sec"] for g in rounds]
    bound = [g["matmul"] / flops_per_char(cell, H, V) for g in rounds]
    return {"ratio": statistics.median(vs_torch),
            "rnnlab_of_bound": statistics.median(g[ours]["chars_per_sec"] / b for g, b in zip(rounds, bound)),
            "products_only_ratio": statistics.median(g[ours]["products_only_chars_per_sec"]
                                                     / g[theirs]["chars_per_sec"] for g in rounds),
            "rnnlab_chars_per_sec": statistics.median(g[ours]["chars_per_sec"] for g in rounds),
            "torch_chars_per_sec": statistics.median(g[theirs]["chars_per_sec"] for g in rounds),
            "products_only_chars_per_sec": statistics.median(g[ours]["products_only_chars_per_sec"]
                                                             for g in rounds),
            "bound_chars_per_sec": statistics.median(bound),
            "matmul_gflops": [g["matmul"] / 1e9 for g in rounds],
            "ratios": vs_torch,
            "rnnlab_peak_rss_mib": ours.end(), "torch_peak_rss_mib": theirs.end()}


def steps_for(H, B):
    """Enough batches for a stable timing, fewer for the big points."""
    return max(8, min(200, int(4e6 / (B * H * 4 + 1e4))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="three points only")
    ap.add_argument("--points", help="only these points, e.g. lstm:256:32,gru:64:128 (float32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="the results' JSON file, and beside it the table (.md); default: results.json "
                    "beside this script for the full grid, nothing for chosen points (--quick, --points: printed "
                    "only, so that a smoke test does not overwrite the grid's results)")
    args = ap.parse_args()
    if args.worker:
        fw, cell, H, B, dtype, steps = args.worker
        worker(fw, cell, int(H), int(B), dtype, int(steps))
        return

    V = batches(1, 1)[0]
    points = [(c, h, b, "float32") for c in ("rnn", "lstm", "gru") for h in (64, 256, 512)
              for b in (1, 32, 128)] + [("lstm", 256, 32, "float64")]
    if args.quick:
        points = [("rnn", 64, 32, "float32"), ("lstm", 256, 32, "float32"), ("gru", 64, 1, "float32")]
    if args.points:
        points = [(c, int(h), int(b), "float32") for c, h, b in (p.split(":") for p in args.points.split(","))]
    rows = []
    for cell, H, B, dtype in points:
        steps = steps_for(H, B)
        row = {"cell": cell, "hidden": H, "batch": B, "dtype": dtype, "steps": steps,
               **side_by_side(cell, H, B, V, dtype, steps, args.repeats)}
        rows.append(row)
        print(f"{cell:4} H{H:<3} B{B:<3} {dtype}: rnnlab {row['rnnlab_chars_per_sec']:>10,.0f}  torch "
              f"{row['torch_chars_per_sec']:>10,.0f}  ratio {row['ratio']:.2f}  "
              f"of bound {row['rnnlab_of_bound']:.0%}  products alone {row['products_only_ratio']:.2f}  RSS {row['rnnlab_peak_rss_mib']:.0f}/"
              f"{row['torch_peak_rss_mib']:.0f} MiB", flush=True)
    f32 = [r["ratio"] for r in rows if r["dtype"] == "float32"]
    ceiling = [r["products_only_ratio"] for r in rows if r["dtype"] == "float32"]
    summary = {"geomean_ratio_float32": float(np.exp(np.mean(np.log(f32)))), "min_ratio_float32": min(f32),
               "geomean_products_only_ratio_float32": float(np.exp(np.mean(np.log(ceiling)))),
               "matmul_gflops": {dt: statistics.median(g for r in rows if r["dtype"] == dt for g in r["matmul_gflops"])
                                 for dt in sorted({r["dtype"] for r in rows})},    # medians of those measured
               "threads": int(THREADS),
               "machine": machine()}
    print(json.dumps(summary, indent=1))
    out = args.out or (None if args.quick or args.points else str(HERE / "results.json"))
    table = [("| cell | H | B | dtype | rnnlab chars/s | PyTorch chars/s | ratio | of bound | products alone: "
              "ratio | RSS rnnlab / torch (MiB) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['cell']} | {r['hidden']} | {r['batch']} | {r['dtype']} | "
                     f"{r['rnnlab_chars_per_sec']:,.0f} | {r['torch_chars_per_sec']:,.0f} | {r['ratio']:.2f} | "
                     f"{r['rnnlab_of_bound']:.0%} | {r['products_only_ratio']:.2f} | "
                     f"{r['rnnlab_peak_rss_mib']:.0f} / {r['torch_peak_rss_mib']:.0f} |")
    if out:
        Path(out).write_text(json.dumps({"summary": summary, "points": rows}, indent=1))
        Path(out).with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
