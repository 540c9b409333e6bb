"""What a fraction of the matrix-multiply bound leaves for the work that is not a product.

    python experiments/benchmarks/bound_budget.py                       # LSTM H512 B128, 65 % of the bound
    python experiments/benchmarks/bound_budget.py --cell lstm --H 256 --B 32 --fraction 0.5

For one of bench.py's points: the time per batch at which training would run at ``fraction`` of the
bound (bench.py's definition: NumPy's matmul rate over the FLOPs of the products), minus the time of the
products themselves at their packed shapes (bench.py's "products alone"), is the budget left for
everything else in a training step. Against it, floors for work any NumPy trainer of this model must do
besides the products, each measured in its cheapest form:

- Adam's update of the P parameters: at least 7 streams of P floats through memory (read g, m, v, p;
  write m, v, p), timed as the same traffic in whole-array NumPy passes (np.add: 2 reads + 1 write);
- the gates' activation: one ``tanh`` over all N x G·H gate values of a batch, in one call;
- the cell's output nonlinearity (LSTM: tanh(c) over N x H), in one call;
- the softmax's exponentials over the N x V logits, in one call;
- the gates' backward: each gate value's activation derivative, and its product with the gradient
  arriving at it — at least two element-wise operations, so two passes (np.multiply) over N x G·H.

Nothing else is counted (no per-step work, no recurrence of the cell state, no loss, no clipping): if
these floors alone exceed the budget, no NumPy design (one pass per element-wise operation) on this BLAS
reaches the fraction at that point.
"""

from __future__ import annotations

import argparse
import statistics
import time

import bench  # first: it sets the BLAS thread variables before NumPy loads its BLAS

import numpy as np


def timed(f, repeats=7):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floors(cell, H, V, N, P, dtype):
    """Seconds per batch of the floors listed in the module's docstring."""
    rng = np.random.default_rng(0)
    G = bench.GATES[cell]
    a, b, c = (rng.standard_normal(P).astype(dtype) for _ in range(3))
    gates = rng.standard_normal((N, G * H)).astype(dtype)
    cells = rng.standard_normal((N, H)).astype(dtype)
    logits = rng.standard_normal((N, V)).astype(dtype)
    probs = np.empty_like(logits)
    out = {"adam (7 streams of P)": timed(lambda: np.add(a, b, out=c)) * 7 / 3,
           "tanh over the gates": timed(lambda: np.tanh(gates, out=gates))}
    if cell == "lstm":
        out["tanh(c)"] = timed(lambda: np.tanh(cells, out=cells))
    out["exp over the logits"] = timed(lambda: np.exp(logits, out=probs))
    grad = np.empty_like(gates)
    out["gates' backward (2 passes)"] = 2 * timed(lambda: np.multiply(gates, gates, out=grad))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="lstm", choices=sorted(bench.GATES))
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--B", type=int, default=128)
    ap.add_argument("--fraction", type=float, default=0.65)
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    cell, H, B, dtype = args.cell, args.H, args.B, "float32"
    V, data = bench.batches(B, args.batches)
    G = bench.GATES[cell]
    N = sum(int(b.mask.sum()) for b in data) / len(data)          # trained characters (packed rows) per batch
    P = G * H * (V + H + 1) + H * V + V                              # the one-layer model's parameters
    rate = bench.matmul_rate(dtype)
    at_fraction = N * bench.flops_per_char(cell, H, V) / (args.fraction * rate)
    products = N / bench.products_only(cell, H, V, dtype, data, repeats=5)
    budget = at_fraction - products
    parts = floors(cell, H, V, int(N), P, dtype)
    floor = sum(parts.values())
    print(f"{cell} H{H} B{B}: {N:.0f} characters per batch, {P:,} parameters; NumPy matmul {rate / 1e9:.0f} GFLOP/s")
    print(f"  a batch at {args.fraction:.0%} of the bound: {at_fraction * 1e3:7.2f} ms")
    print(f"  its products alone (packed shapes):   {products * 1e3:7.2f} ms  ({at_fraction / products * args.fraction:.0%} of the bound if nothing else cost)")
    print(f"  budget for everything else:           {budget * 1e3:7.2f} ms")
    for k, v in parts.items():
        print(f"    floor: {k:28s} {v * 1e3:7.2f} ms")
    print(f"  floors together:                      {floor * 1e3:7.2f} ms  "
          f"→ at most {N * bench.flops_per_char(cell, H, V) / ((products + floor) * rate):.0%} of the bound")


if __name__ == "__main__":
    main()
