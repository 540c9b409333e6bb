"""The per-step products of an LSTM of 512 units (h Wh forward, dz Whᵀ backward) at batch 32 and 128:
one product of the whole batch on 2 BLAS threads, against two half-batch products with one BLAS thread
each in two Python threads, as batch shards (``CharLM(threads=2)``) run them. Medians of 5 repeats.

    python experiments/benchmarks/shard_products.py
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np
from threadpoolctl import ThreadpoolController

H, STEPS, REPEATS = 512, 400, 5


def products(h, d, W, out_fwd, out_bwd, rows):
    """STEPS forward and backward per-step products on the batch rows ``rows``."""
    for _ in range(STEPS):
        np.matmul(h[rows], W, out=out_fwd[rows])
        np.matmul(d[rows], W.T, out=out_bwd[rows])


def main():
    controller, pool = ThreadpoolController(), ThreadPoolExecutor(2)
    for B in (32, 128):
        rng = np.random.default_rng(0)
        W = rng.standard_normal((H, 4 * H), dtype=np.float32)
        h = rng.standard_normal((B, H), dtype=np.float32)
        d = rng.standard_normal((B, 4 * H), dtype=np.float32)
        out_fwd, out_bwd = np.empty((B, 4 * H), np.float32), np.empty((B, H), np.float32)
        whole, shards = [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            products(h, d, W, out_fwd, out_bwd, slice(None))
            whole.append(time.perf_counter() - t0)
            with controller.limit(limits=1, user_api="blas"):
                t0 = time.perf_counter()
                list(pool.map(lambda rows: products(h, d, W, out_fwd, out_bwd, rows),  # noqa: B023
                              [slice(0, B // 2), slice(B // 2, B)]))
                shards.append(time.perf_counter() - t0)
        flops = STEPS * 2 * (2 * B * H * 4 * H)
        print(f"B{B}: whole batch, 2 BLAS threads {flops / np.median(whole) / 1e9:.0f} GFLOP/s; "
              f"two half-batch shards, 1 BLAS thread each {flops / np.median(shards) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
