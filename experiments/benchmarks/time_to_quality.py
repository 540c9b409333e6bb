"""Time to quality: seconds of training until a validation loss is reached, on the built-in names.

    python experiments/benchmarks/time_to_quality.py            # → time_to_quality.json, a table on stdout
    python experiments/benchmarks/time_to_quality.py --no-torch # without PyTorch

The quality bar Q is the final validation loss of the course's textbook ``model()`` (a 50-unit RNN,
SGD 0.01 on the loss summed per name, element-wise clip 5, one name per step, 35,000 steps, the hidden
state carried from name to name), trained on the training split of the default job. Then:

- textbook: ``rnnlab.textbook.model()`` itself (without its periodic samples), its validation loss
  measured every 500 steps through its ``hook`` (outside the clock); its time is when it first
  reaches Q;
- rnnlab: the default job's model and settings (LSTM 64, Adam 0.005, batches of 32 padded names,
  global-norm clip 5, float32), measured every 5 steps;
- PyTorch (optional, ``pip install torch==2.13.0``): ``nn.LSTM`` 64 with the same settings on the same
  batches, measured every 5 steps.

Only training time counts (forward, backward, clipping, update, and for the textbook its loop's own
bookkeeping); evaluations are outside the clock. Each contender runs ``--repeats`` times (median), 2
threads. Losses are nats per character on the same validation split: the textbook's parameters are
evaluated by rnnlab's RNN cell (``textbook.to_engine``) with the start token's input row set to zero
(the course's first input is a zero vector).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import time
from pathlib import Path

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, THREADS)

import numpy as np  # noqa: E402

import bench  # noqa: E402  (this folder: the same rnnlab and PyTorch models as the throughput benchmark)
from rnnlab import textbook  # noqa: E402
from rnnlab.data import load_dataset  # noqa: E402
from rnnlab.model import CharLM  # noqa: E402
from rnnlab.train import evaluate  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_STEPS = 3000   # a batched contender that has not reached Q by then is reported as not reaching it


def dataset():
    return load_dataset("lines", lowercase=True, val_fraction=0.1)   # the default job's split (seed 0)


def textbook_val(ds, parameters) -> float:
    lm = CharLM(len(ds.vocab), "rnn", parameters["Waa"].shape[0], dtype=np.float64)
    engine = textbook.to_engine(parameters)
    params = {"l0.Wx": engine["Wx"], "l0.Wh": engine["Wh"], "l0.b": engine["b"], "Wy": engine["Wy"],
              "by": engine["by"]}
    params["l0.Wx"][0] = 0   # the course feeds a zero vector (None) where rnnlab feeds the start token
    return evaluate(lm, params, ds, "val")


def run_textbook(ds, iterations=35000, every=500):
    """``textbook.model`` on the training names, with the validation loss every ``every`` steps.
    Returns [(training seconds, val)], starting at step ``every``."""
    vocab = ds.vocab
    curve, clock = [], {"seconds": 0.0, "since": 0.0}

    def measure(j, parameters, loss):
        clock["seconds"] += time.perf_counter() - clock["since"]
        if (j + 1) % every == 0:
            curve.append((clock["seconds"], textbook_val(ds, parameters)))
        clock["since"] = time.perf_counter()

    with contextlib.redirect_stdout(io.StringIO()):   # no samples (dino_names=0): they are not training
        clock["since"] = time.perf_counter()
        textbook.model(ds.lines["train"], vocab.ix_to_char, vocab.char_to_ix, num_iterations=iterations,
                       dino_names=0, vocab_size=len(vocab), hook=measure)
    return curve


def until(trainer, ds, batches, target, every=5):
    """Train a batched contender on ``batches`` until its validation loss ≤ target.
    Returns (training seconds, steps) or (seconds, None) if the batches ran out first."""
    step, val_loss = trainer("lstm", 64, len(ds.vocab), "float32", lr=0.005)
    seconds = 0.0
    for s, b in enumerate(batches):
        t0 = time.perf_counter()
        step(b)
        seconds += time.perf_counter() - t0
        if (s + 1) % every == 0 and val_loss(ds) <= target:
            return seconds, s + 1
    return seconds, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=str(HERE / "time_to_quality.json"))
    args = ap.parse_args()
    ds = dataset()

    tb_runs = [run_textbook(ds) for _ in range(args.repeats)]
    target = tb_runs[0][-1][1]    # deterministic: every repeat ends at the same loss
    assert all(r[-1][1] == target for r in tb_runs)
    tb_first = [next(sec for sec, v in r if v <= target) for r in tb_runs]
    result = {"target_val_nll": target, "textbook_total_seconds": [r[-1][0] for r in tb_runs],
              "textbook_seconds": tb_first,
              "textbook_curve": [(round(sec, 3), v) for sec, v in tb_runs[0]]}
    contenders = {"rnnlab": bench.rnnlab_trainer}
    if not args.no_torch:
        contenders["pytorch"] = bench.torch_trainer
    batches = [ds.train_batch(s, 32, 0) for s in range(MAX_STEPS)]   # batches of 32, seed 0, kept alive
    for name, trainer in contenders.items():
        runs = [until(trainer, ds, batches, target) for _ in range(args.repeats)]
        result[f"{name}_seconds"] = [sec for sec, _ in runs]
        result[f"{name}_steps"] = runs[0][1]
    med = {k: statistics.median(result[f"{k}_seconds"]) for k in ["textbook", *contenders]}
    result["median_seconds"] = med
    result["textbook_over_rnnlab"] = med["textbook"] / med["rnnlab"]
    if "pytorch" in med:
        result["pytorch_over_rnnlab"] = med["pytorch"] / med["rnnlab"]
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"quality bar: the textbook model()'s final validation loss, {target:.4f} nats/char")
    print(f"| contender | steps to the bar | seconds (median of {args.repeats}) | vs rnnlab |")
    print("|---|---|---|---|")
    tb_steps = 500 * (1 + [v <= target for _, v in tb_runs[0]].index(True))
    print(f"| textbook `model()` (RNN 50, SGD, 1 name/step) | {tb_steps:,} | {med['textbook']:.2f} | "
          f"{med['textbook'] / med['rnnlab']:.1f}× slower |")
    print(f"| rnnlab default (LSTM 64, Adam, batch 32) | {result['rnnlab_steps']} | {med['rnnlab']:.2f} | 1 |")
    if "pytorch" in med:
        steps = result["pytorch_steps"]
        print(f"| PyTorch nn.LSTM, same settings | {steps if steps else f'> {MAX_STEPS}'} | "
              f"{med['pytorch']:.2f} | {med['pytorch'] / med['rnnlab']:.1f}× |")
    if not all(math.isfinite(v) for v in med.values()):
        raise SystemExit("a contender did not finish")


if __name__ == "__main__":
    main()
