"""What a target leaves for the work that is not a product, against what any NumPy trainer must spend on it.

    python experiments/benchmarks/bound_budget.py                              # LSTM H512 B128, 65 % of the bound
    python experiments/benchmarks/bound_budget.py --B 32 --ratio 0.9           # LSTM H512 B32, 0.9 of PyTorch
    python experiments/benchmarks/bound_budget.py --cell lstm --H 256 --B 32 --fraction 0.5

For one of bench.py's points, the target is a time per batch: the one at which training would run at
``fraction`` of the bound (bench.py's definition: NumPy's matmul rate over the FLOPs of the products), or
with ``--ratio``, at that ratio of PyTorch's throughput (bench.py's PyTorch trainer, measured by this run).
Minus the time of the products themselves at their packed shapes — bench.py's "products alone", each
batch's per-step products in the faster of the row and the transposed (column) layout's forms — it is
the budget left for everything else in a training step. Against it, floors for the work any NumPy
trainer of this model must also do, each in its cheapest form and counted low (one NumPy call per
operation, as NumPy's ufuncs are; a real trainer does more):

per batch
- Adam's update of the P parameters: at least 7 streams of P floats through memory (read g, m, v, p;
  write m, v, p), timed as the same traffic in whole-array NumPy passes (np.add: 2 reads + 1 write);
- global-norm clipping: one dot product of the P gradients;
- the softmax's exponentials over the N x V logits, in one call;
- the gates' activation derivatives: one pass over all N x G·H gate values;

per step t, on its n_t rows (the recurrence makes these a call per step for any design)
- the gates' pre-activations: the step's product added to the input's part (one pass over n x G·H),
  or the input folded into the product (one-hot rows appended to h, their weights to Wh), whichever
  costs less (from the second step: names start from zeros, so the first has no recurrent term);
- the gates' activation: one ``tanh`` over n x G·H (a sigmoid as 0.5 + 0.5 tanh(z / 2), with its
  halving and shift counted as free);
- LSTM: c_t = f c_{t-1} + i g (three passes over n x H), tanh(c_t) and h_t = o tanh(c_t) (one each);
- backward: the gradient reaching h_t (one pass, the output layer's part added), the gates' gradients
  (one pass over n x G·H); LSTM: the gradient reaching c_t (two passes) and c_{t-1} (one).

If products and floors together exceed the target, no NumPy design (one pass per element-wise operation)
on this BLAS reaches it at that point. Everything not counted — the sigmoid's affine map, the loss's other
passes, Python's own work, the caches the passes evict — only moves the target further away.
"""

from __future__ import annotations

import argparse

import bench  # first: it sets the BLAS thread variables before NumPy loads its BLAS

import numpy as np


def floors(cell, H, V, sizes, P, dtype):
    """Seconds per batch of the floors listed in the module's docstring; ``sizes``: n_t of each batch."""
    rng = np.random.default_rng(0)
    G, B, lstm = bench.GATES[cell], max(n[0] for n in sizes), cell == "lstm"
    N = max(sum(n) for n in sizes)
    a, b, c = (rng.standard_normal(P).astype(dtype) for _ in range(3))
    gates, logits = rng.standard_normal((N, G * H)).astype(dtype), rng.standard_normal((N, V)).astype(dtype)
    probs, grad = np.empty_like(logits), np.empty_like(gates)
    out = {"adam (7 streams of P)": bench.median_seconds(lambda: np.add(a, b, out=c)) * 7 / 3,
           "clipping (a dot product of P)": bench.median_seconds(lambda: np.dot(a, b)),
           "exp over the logits": bench.median_seconds(lambda: np.exp(logits, out=probs)),
           "gates' derivatives (one pass)": bench.median_seconds(lambda: np.multiply(gates, gates, out=grad))}

    # per step: preallocated (B, ·) operands, in cache, one call per operation at each n_t
    z, zz = rng.standard_normal((B, G * H)).astype(dtype), rng.standard_normal((B, G * H)).astype(dtype)
    h, hh, hhh = (rng.standard_normal((B, H)).astype(dtype) for _ in range(3))
    Wh = rng.standard_normal((H, G * H)).astype(dtype)
    h_aug, W_aug = np.ones((B, H + V + 1), dtype), rng.standard_normal((H + V + 1, G * H)).astype(dtype)

    def per_step(op, steps=sizes):
        return bench.seconds_per_batch(lambda s, n: op(n), steps)
    recurrent = [n_t[1:] for n_t in sizes]     # the steps with a recurrent term (names start from zeros)
    add = per_step(lambda n: np.add(z[:n], zz[:n], out=z[:n]), recurrent)
    folded = (per_step(lambda n: np.matmul(h_aug[:n], W_aug, out=z[:n]), recurrent)
              - per_step(lambda n: np.matmul(h[:n], Wh, out=z[:n]), recurrent))
    out["step: input part of the gates"] = max(0.0, min(add, folded))
    out["step: tanh over the gates"] = per_step(lambda n: np.tanh(z[:n], out=z[:n]))
    out["step: gates' gradients (one pass)"] = per_step(lambda n: np.multiply(z[:n], zz[:n], out=zz[:n]))
    one_pass = per_step(lambda n: np.multiply(h[:n], hh[:n], out=hhh[:n]))
    if lstm:
        out["step: c_t (three passes)"] = 3 * one_pass
        out["step: tanh(c_t)"] = per_step(lambda n: np.tanh(hh[:n], out=hhh[:n]))
        out["step: h_t = o tanh(c_t)"] = one_pass
        out["step: gradient of h_t, c_t, c_t-1 (four passes)"] = 4 * one_pass
    else:
        out["step: gradient reaching h_t"] = one_pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="lstm", choices=sorted(bench.GATES))
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--B", type=int, default=128)
    target = ap.add_mutually_exclusive_group()
    target.add_argument("--fraction", type=float, help="of the matmul bound (default 0.65)")
    target.add_argument("--ratio", type=float, help="of PyTorch's throughput, measured now")
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    cell, H, B, dtype = args.cell, args.H, args.B, "float32"
    V, data = bench.batches(B, args.batches)
    G = bench.GATES[cell]
    sizes = bench.step_sizes(data)
    N = sum(sum(n) for n in sizes) / len(sizes)                      # trained characters (packed rows) per batch
    P = G * H * (V + H + 1) + H * V + V                              # the one-layer model's parameters
    rate = bench.matmul_rate(dtype)
    if args.ratio is None:
        fraction = 0.65 if args.fraction is None else args.fraction
        what = f"{fraction:.0%} of the bound"
        target = N * bench.flops_per_char(cell, H, V) / (fraction * rate)
    else:
        torch_rate = bench.run_point("torch", cell, H, B, dtype, bench.steps_for(H, B), 3)["chars_per_sec"]
        what = f"{args.ratio:g} of PyTorch's {torch_rate:,.0f} characters/s"
        target = N / (args.ratio * torch_rate)
    products = N / bench.products_only(cell, H, V, dtype, data, repeats=5, fastest=True)
    parts = floors(cell, H, V, sizes, P, dtype)
    floor = sum(parts.values())
    ceiling = products + floor

    def reach(seconds):
        if args.ratio is None:
            return f"{N * bench.flops_per_char(cell, H, V) / (seconds * rate):.0%} of the bound"
        return f"{N / seconds / torch_rate:.2f} of PyTorch"
    print(f"{cell} H{H} B{B}: {N:.0f} characters per batch, {P:,} parameters; NumPy matmul {rate / 1e9:.0f} GFLOP/s")
    print(f"  a batch at {what}: {target * 1e3:7.2f} ms")
    print(f"  its products alone (packed, faster layout): {products * 1e3:7.2f} ms  → {reach(products)} if nothing else cost")
    print(f"  budget for everything else:           {(target - products) * 1e3:7.2f} ms")
    for k, v in parts.items():
        print(f"    floor: {k:46s} {v * 1e3:7.3f} ms")
    print(f"  floors together:                      {floor * 1e3:7.2f} ms  → products + floors reach at most {reach(ceiling)}")


if __name__ == "__main__":
    main()
