"""Two checkouts of rnnlab against each other, side by side: bench.py's rnnlab worker run from each (its
PYTHONPATH set to the checkout), their timed passes taken in turn with bench.py's pause, the ratio the median
of the rounds' ratios (B ÷ A: > 1, B is faster).

    python experiments/benchmarks/ab.py ../before . --points lstm:64:32,gru:64:128 --rounds 9

A worker trains as bench.py's does (forward, backward, clip, Adam, names batches, 2 threads); each pass is one
over the point's batches. For a change that is not yet committed: check the old commit out elsewhere
(``git worktree add ../before HEAD``) and compare it with the working tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the checkout to compare against (a directory holding rnnlab/)")
    ap.add_argument("b", help="the checkout to measure")
    ap.add_argument("--points", default="lstm:64:32", help="cell:H:B,… (default: the default job's)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    for checkout in (args.a, args.b):
        if not (Path(checkout) / "rnnlab" / "__init__.py").is_file():
            ap.error(f"{checkout!r} holds no rnnlab/ package: give the root of a checkout")
    for point in args.points.split(","):
        cell, H, B = point.split(":")
        ratios = compare(args.a, args.b, cell, int(H), int(B), args.rounds)
        print(f"{point}: B/A median {statistics.median(ratios):.3f}  rounds "
              + " ".join(f"{x:.2f}" for x in ratios), flush=True)


if __name__ == "__main__":
    main()
