"""A training step with the hidden units split between two processes (rnnlab/split.py) against the same
model without the split, side by side in one process, alternating rounds (the machine is shared: only
ratios taken within one run count).

    python experiments/benchmarks/unit_split.py                          # the grid's RNN, LSTM and GRU points
    python experiments/benchmarks/unit_split.py --points lstm:64:32,gru:512:1

A step is what the training loop does: loss_and_grads, global-norm clip 5, the optimizer step (Adam) through
``CharLM.update``. "with" forces the split by units on every batch (``MIN_SPLIT_WORK``, ``MIN_SPLIT_PARAMS`` set
to 0, the split by sequences off), "without" is CharLM(threads=2) with the split off: batch shards in two threads where they pay, else one
pass with two BLAS threads — the engine before the split. Each point prints both times per batch and
without/with (> 1: the split is faster), the figures behind ``CharLM.split_pays``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import bench
from rnnlab.clipping import NormClip
from rnnlab.model import CharLM
from rnnlab.optim import Adam

GRID = [f"{cell}:{H}:{B}" for cell in ("rnn", "lstm", "gru") for H in (64, 256, 512) for B in (1, 32, 128)]
BATCHES = {1: 200, 32: 40, 128: 20}


class Split(CharLM):
    MIN_SPLIT_WORK = MIN_SPLIT_PARAMS = 0      # split every batch by its units
    HALVES_MAX_WORK = 0                        # (never by its sequences: ``CharLM.halves_pay``)


class NoSplit(CharLM):
    splits_units = False


def trainer(cls, cell, H, V):
    lm = cls(V, cell, H, threads=2)
    params = lm.init_params(np.random.default_rng(0))
    opt, clip = Adam(1e-3), NormClip(5.0)

    def step(b):
        _, grads, _ = lm.loss_and_grads(params, b.x, b.y, b.mask)
        clip(grads)
        lm.update(opt, params, grads)
    return step, lm.close


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=",".join(GRID), help="cell:H:B,… (default: the grid's cells)")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    for point in args.points.split(","):
        cell, H, B = point.split(":")
        H, B = int(H), int(B)
        V, data = bench.batches(B, BATCHES.get(B, 40))
        steps = {"with": trainer(Split, cell, H, V), "without": trainer(NoSplit, cell, H, V)}
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, (step, close) in steps.items():
                for b in data[:3]:
                    step(b)                       # warm-up (and the split's second process started)
                time.sleep(0.3)                   # OpenBLAS's threads of the other round stop spinning first
                t0 = time.perf_counter()
                for b in data:
                    step(b)
                times[name].append((time.perf_counter() - t0) / len(data))
                close()                           # as train() ends: BLAS gets its threads back
        w, wo = (statistics.median(times[k]) for k in ("with", "without"))
        print(f"{cell} H{H} B{B}: with the split {w * 1e3:.3f} ms, without {wo * 1e3:.3f} ms per batch, "
              f"without/with {wo / w:.2f}", flush=True)


if __name__ == "__main__":
    main()
