"""The cost of an LSTM's per-step product, (n, H)·(H, 4H), against n, the sequences still running at a step:
NumPy (its bundled OpenBLAS) against PyTorch's ``torch.mm`` (MKL) on the same machine and threads, in µs
per product (median of 7 timings). A packed batch runs its steps at every n from B down to 1, so this
curve, not the product at n = B, sets the cost of the recurrence.

    python experiments/benchmarks/step_products.py            # needs torch for the second row of each H
"""

from __future__ import annotations

import os
import statistics
import time

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, THREADS)

import numpy as np  # noqa: E402

SIZES, NS = (64, 256, 512), (1, 2, 4, 8, 16, 32, 64, 128)


def per_call(product, a, b, out, reps: int) -> float:
    """``product(a, b, out=out)``: the median over 7 timings of ``reps`` calls, in µs per call."""
    product(a, b, out=out)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            product(a, b, out=out)
        times.append((time.perf_counter() - t0) / reps * 1e6)
    return statistics.median(times)


def main():
    try:
        import torch
        torch.set_num_threads(int(THREADS))
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print("| H | library | " + " | ".join(f"n = {n}" for n in NS) + " |")
    print("|---|---|" + "---|" * len(NS))
    for H in SIZES:
        W = rng.standard_normal((H, 4 * H), dtype=np.float32)
        reps = 100 if H >= 512 else 300
        row = []
        for n in NS:
            h, out = rng.standard_normal((n, H), dtype=np.float32), np.empty((n, 4 * H), np.float32)
            row.append(per_call(np.matmul, h, W, out, reps))
        print(f"| {H} | NumPy (OpenBLAS) | " + " | ".join(f"{t:.0f}" for t in row) + " |", flush=True)
        if torch is not None:
            Wt, row = torch.from_numpy(W), []
            for n in NS:
                h, out = torch.randn(n, H), torch.empty(n, 4 * H)
                row.append(per_call(torch.mm, h, Wt, out, reps))
            print(f"| {H} | PyTorch (MKL) | " + " | ".join(f"{t:.0f}" for t in row) + " |", flush=True)


if __name__ == "__main__":
    main()
