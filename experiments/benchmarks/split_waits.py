"""Where a unit split's processes wait for each other (rnnlab/split.py): every wait of both processes timed.

    python experiments/benchmarks/split_waits.py --point lstm:512:128 --passes 6

Trains as bench.py's rnnlab worker does (names batches, Adam, norm clip 5, 2 threads) at a point whose
batches split the hidden units between two processes, with a clock around each of the two processes' waits
(``Share.wait``: a spin until the other has reached the same meeting point) and around each one's part of
every batch. It prints, per process, the waits by size (how many, and their sum per batch), and the
batches' imbalance: each process's work in a batch is its part of the batch less its waits, and
|parent's − child's| / 2 is what a perfect re-division of that batch's work would save. "Predicted" is
what is left of that when each batch is divided by the mean imbalance of the three before it — the most a
controller of the division between batches could take (session 17: experiments/benchmarks/README.md).
The first pass is a warm-up; the rest are reported.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench

BINS_US = (0, 50, 200, 1000, 5000, float("inf"))
CAPACITY = 1 << 18                       # waits recorded per process


def timed(split):
    """Clocks around ``Share.wait`` and ``UnitSplit._half`` (class attributes, so the child, forked at the
    first batch, has them too), recording into shared arrays: (waits (2, CAPACITY), counts (2,),
    batches (2, CAPACITY, 2): each batch's part and the waits within it, seconds), in the split's shared
    memory (the child, forked later, writes into the same arrays)."""
    waits, counts = split._shared((2, CAPACITY), np.float64), split._shared((2,), np.int64)
    batches, done = split._shared((2, CAPACITY, 2), np.float64), split._shared((2,), np.int64)
    in_batch = [0.0]
    wait, half = split.Share.wait, split.UnitSplit._half

    def timed_wait(self):
        t = time.perf_counter()
        wait(self)
        d = time.perf_counter() - t
        i = counts[self.k]
        if i < CAPACITY:
            waits[self.k, i] = d
            counts[self.k] = i + 1
        in_batch[0] += d

    def timed_half(self, share, *args, **kwargs):
        in_batch[0] = 0.0
        t = time.perf_counter()
        out = half(self, share, *args, **kwargs)
        i = done[share.k]
        if i < CAPACITY:
            batches[share.k, i] = time.perf_counter() - t, in_batch[0]
            done[share.k] = i + 1
        return out

    split.Share.wait, split.UnitSplit._half = timed_wait, timed_half
    return waits, counts, batches, done


def report(waits, counts, batches, done, first_wait, first_batch) -> None:
    n = int(min(done)) - first_batch
    if n <= 0:
        print("no batch split its hidden units at this point (see CharLM.split_pays and halves_pay)")
        return
    part = batches[:, first_batch:first_batch + n, 0] * 1e3      # (process, batch) ms
    waited = batches[:, first_batch:first_batch + n, 1] * 1e3
    print(f"{n} batches: a batch's part {np.median(part[0]):.1f} ms (median), waits per batch "
          f"parent {waited[0].mean():.2f} ms, child {waited[1].mean():.2f} ms (means)")
    for k, name in enumerate(("parent", "child")):
        w = waits[k, first_wait[k]:counts[k]] * 1e6
        cells = []
        for lo, hi in itertools.pairwise(BINS_US):
            sel = w[(w >= lo) & (w < hi)]
            label = f"≥ {lo / 1e3:g} ms" if hi == float("inf") else f"{lo:g}–{hi:g} µs"
            cells.append(f"{label}: {len(sel)} ({sel.sum() / 1e3 / n:.2f} ms/batch)")
        print(f"  {name} waits, {len(w) / n:.0f} a batch — " + ", ".join(cells))
    d = (part[0] - waited[0]) - (part[1] - waited[1])               # parent's work − child's
    batch = np.median(part[0])
    lag1 = f"; lag-1 autocorrelation {np.corrcoef(d[:-1], d[1:])[0, 1]:.2f}" if n > 2 else ""
    print(f"  imbalance |parent − child| / 2: {np.mean(np.abs(d)) / 2:.2f} ms a batch "
          f"({np.mean(np.abs(d)) / 2 / batch:.1%}){lag1}")
    if n > 4:
        guess = np.convolve(d, np.ones(3) / 3, "valid")[:-1]         # mean of the three batches before
        left = d[3:] - guess
        print(f"  predicted from the three batches before: {np.mean(np.abs(left)) / 2:.2f} ms a batch "
              f"({np.mean(np.abs(left)) / 2 / batch:.1%}) would remain")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", default="lstm:512:128", help="cell:H:B (float32)")
    ap.add_argument("--passes", type=int, default=6, help="passes over the point's 8 batches, the first a warm-up")
    args = ap.parse_args()
    if args.passes < 2:
        ap.error(f"--passes {args.passes}: at least 2 (the first is a warm-up, not reported)")
    cell, H, B = args.point.split(":")
    from rnnlab import split
    recorded = timed(split)
    V, data = bench.batches(int(B), 8)
    step, _ = bench.rnnlab_trainer(cell, int(H), V, "float32")
    for b in data:                                                  # the warm-up pass
        step(b)
    time.sleep(0.1)                                                 # the child's last records written
    waits, counts, batches, done = recorded
    first_wait, first_batch = counts.copy(), int(min(done))
    for _ in range(args.passes - 1):
        for b in data:
            step(b)
    time.sleep(0.1)
    report(waits, counts, batches, done, first_wait, first_batch)


if __name__ == "__main__":
    main()
