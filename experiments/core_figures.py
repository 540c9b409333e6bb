"""Does the core learn? RNN vs LSTM vs GRU on the built-in dinosaur names at equal budget.

    python experiments/core_figures.py [--steps 1500] [--hidden 64] [--seeds 0 1 2]

Prints, for each cell, the best validation loss (nats/char) of each seed, their mean, and the unigram
baseline of the same split; training uses Adam, global-norm clip 5, batch 32, float32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rnnlab.clipping import NormClip
from rnnlab.baselines import unigram_nll
from rnnlab.data import load_dataset
from rnnlab.model import CharLM
from rnnlab.optim import Adam
from rnnlab.train import TrainOptions, train


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    args = ap.parse_args()

    ds = load_dataset("lines", lowercase=True, val_fraction=0.1, seed=0)
    base = unigram_nll(ds.targets("train"), ds.targets("val"), len(ds.vocab))
    print(f"dataset: {ds}")
    print(f"unigram baseline (val): {base:.4f} nats/char")
    print(f"budget: {args.steps} steps x batch {args.batch_size}, hidden {args.hidden}, adam lr {args.lr}")
    print("| cell | best val nll per seed | mean | mean - unigram | seconds/run |")
    print("|---|---|---|---|---|")
    for cell in args.cells:
        vals, secs = [], []
        for seed in args.seeds:
            lm = CharLM(len(ds.vocab), cell, args.hidden)
            params = lm.init_params(np.random.default_rng(seed))
            t0 = time.perf_counter()
            hist = train(lm, params, ds, Adam(args.lr), NormClip(5), TrainOptions(
                steps=args.steps, batch_size=args.batch_size, seed=seed, eval_every=100, sample_every=0,
                report_samples=0))
            secs.append(time.perf_counter() - t0)
            vals.append(hist.best_val_nll)
        mean = float(np.mean(vals))
        print(f"| {cell} | {', '.join(f'{v:.4f}' for v in vals)} | {mean:.4f} | {mean - base:+.4f} "
              f"| {np.mean(secs):.1f} |", flush=True)


if __name__ == "__main__":
    main()
