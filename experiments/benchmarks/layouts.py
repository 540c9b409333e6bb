"""The designs still open for the LSTM at batch 32, measured by their parts on the real names batches
(the packed step sizes n_t of B = 32), 2 BLAS threads, ms per batch (medians of 7):

1. A transposed layout — every array (features, N), a step the column slice of its n_t sequences: its
   forward product is Whᵀ·hᵀ (4H, n) and its backward one Wh·dzᵀ written in place, against the engine's
   forms; what it adds — dz and h put back into rows for dWh (the blocks of a per-step layout), and
   element-wise passes that read the previous step's prefix columns instead of rows.
2. A unit split — two Python threads, each owning half of the hidden units and so half of Wh's columns:
   the per-step product of one thread (half of Wh, one BLAS thread) against the whole product on two BLAS
   threads; then a forward pass's per-step work (product, input add, tanh, three passes making h) run
   that way, a barrier per step (a step's h is complete only when both halves are), against one thread;
   and the engine's batch shards (two threads, no per-step synchronisation) against one shard, whole
   training steps.
3. OpenBLAS without its per-call packing of Wh: the no-copy kernels that NumPy's bundled OpenBLAS exports
   (``sgemm_direct`` and the small-matrix kernel of its SkylakeX target), called through ctypes on one
   thread, against NumPy's product on one thread, per batch — skipped where the build has no such symbols.

    python experiments/benchmarks/layouts.py            # H = 256 and 512
"""

from __future__ import annotations

import threading
from pathlib import Path

import bench  # first: it sets the BLAS thread variables before NumPy loads its BLAS

import numpy as np
from threadpoolctl import threadpool_limits

from rnnlab.cells.base import RecurrentBackward
from rnnlab.clipping import NormClip
from rnnlab.model import CharLM
from rnnlab.optim import Adam

B, BATCHES = 32, 8


def ms(f, repeats=7):
    """bench.median_seconds in ms."""
    return bench.median_seconds(f, repeats) * 1e3


def transposed(H, sizes):
    rng = np.random.default_rng(0)
    G = 4 * H
    W = rng.standard_normal((H, G), dtype=np.float32)
    WT = np.ascontiguousarray(W.T)
    N = max(sum(n) for n in sizes)
    hs, hT = rng.standard_normal((N, H), dtype=np.float32), rng.standard_normal((H, N), dtype=np.float32)
    dz, dzT = rng.standard_normal((N, G), dtype=np.float32), rng.standard_normal((G, N), dtype=np.float32)
    rows, cols = np.empty((B, G), np.float32), np.empty((G, B), np.float32)
    dh, dhT = np.empty((B, H), np.float32), np.empty((H, B), np.float32)
    back = RecurrentBackward(W, B)          # the engine's backward form at this size

    def per_batch(step):
        return lambda: bench.seconds_per_batch(step, sizes) * 1e3

    out = {
        "forward product, rows: h Wh (engine)": per_batch(lambda s, n: np.matmul(hs[s:s + n], W, out=rows[:n])),
        "forward product, columns: Whᵀ hᵀ": per_batch(lambda s, n: np.matmul(WT, hT[:, s:s + n], out=cols[:, :n])),
        "backward product, engine's form": per_batch(lambda s, n: back(dz[s:s + n], dh[:n])),
        "backward product, Wh dzᵀ in place": per_batch(lambda s, n: np.matmul(W, dzT[:, s:s + n], out=dhT[:, :n])),
    }
    out = {k: f() for k, f in out.items()}

    # per-step blocks (G, n_t) and (H, n_t) back into rows for one dWh product over the batch
    n_t = sizes[0]
    bz = [rng.standard_normal((G, n), dtype=np.float32) for n in n_t]
    bh = [rng.standard_normal((H, n), dtype=np.float32) for n in n_t]
    offsets = np.concatenate([[0], np.cumsum(n_t)])

    def blocks_to_rows():
        for k in range(len(n_t)):
            s, e = offsets[k], offsets[k + 1]
            np.copyto(dz[s:e], bz[k].T)
            np.copyto(hs[s:e], bh[k].T)
    out["blocks of dz and h into rows (per-step layout)"] = ms(blocks_to_rows)

    # one element-wise pass per step reading the previous step's states: prefix columns vs rows
    prev_T = [rng.standard_normal((H, n), dtype=np.float32) for n in n_t]
    f_T, out_T = [rng.standard_normal((H, n), dtype=np.float32) for n in n_t], [np.empty((H, n), np.float32) for n in n_t]
    c_rows, f_rows = (rng.standard_normal((offsets[-1] + B, H), dtype=np.float32) for _ in range(2))
    o_rows = np.empty_like(c_rows)

    def prefix_columns():
        for k in range(1, len(n_t)):
            np.multiply(f_T[k], prev_T[k - 1][:, :n_t[k]], out=out_T[k])

    def prefix_rows():
        for k in range(1, len(n_t)):
            s, p, n = offsets[k], offsets[k - 1], n_t[k]
            np.multiply(f_rows[s:s + n], c_rows[p:p + n], out=o_rows[s:s + n])
    out["one n×H pass per step on prefix columns"] = ms(prefix_columns)
    out["one n×H pass per step on rows (engine)"] = ms(prefix_rows)
    return out


def unit_split(H, sizes, V, data):
    rng = np.random.default_rng(0)
    G = 4 * H
    W = rng.standard_normal((H, G), dtype=np.float32) * float(H ** -0.5)   # a Python float keeps float32
    halves = [np.ascontiguousarray(W[:, k * G // 2:(k + 1) * G // 2]) for k in range(2)]
    N = max(sum(n) for n in sizes)
    xp = rng.standard_normal((N, G), dtype=np.float32)           # the input projection of every row
    z, hs = np.empty((N, G), np.float32), np.zeros((B + N, H), np.float32)
    rows = np.empty((B, G), np.float32)

    def products(Wm):
        return bench.seconds_per_batch(lambda s, n: np.matmul(hs[:n], Wm, out=rows[:n, :Wm.shape[1]]), sizes) * 1e3
    out = {"forward products, whole Wh, 2 BLAS threads": products(W)}
    with threadpool_limits(1):
        out["forward products, half of Wh, 1 BLAS thread"] = products(halves[0])

    def forward(Wm, gates, units, done, scratch):
        """A forward pass's per-step work on some gate columns and units: the product, the add of the
        input projection, one tanh over the gates, three passes making h (an LSTM's shape of work)."""
        for n_t in sizes:
            s, p = 0, 0
            for n in n_t:
                zt = z[s:s + n, gates]
                np.add(np.matmul(hs[p:p + n], Wm, out=rows[:n, gates]), xp[s:s + n, gates], out=zt)
                np.tanh(zt, out=zt)
                width = units.stop - units.start
                t = np.multiply(zt[:, :width], zt[:, -width:], out=scratch[:n, :width])
                np.tanh(t, out=t)
                np.multiply(t, zt[:, width:2 * width], out=hs[B + s:B + s + n, units])
                done()
                p, s = B + s, s + n

    def one_thread():
        forward(W, slice(0, G), slice(0, H), lambda: None, np.empty((B, H), np.float32))

    def two_threads():
        barrier = threading.Barrier(2)        # a step's h is complete only when both halves are

        def run(k):
            forward(halves[k], slice(k * G // 2, (k + 1) * G // 2), slice(k * H // 2, (k + 1) * H // 2),
                    barrier.wait, np.empty((B, H), np.float32))
        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        with threadpool_limits(1):           # one BLAS thread for each (the setting is the process's)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    out["forward steps, one thread (2 BLAS threads)"] = ms(one_thread) / len(sizes)
    out["forward steps, unit split: 2 threads + a barrier a step"] = ms(two_threads) / len(sizes)

    def training(min_shard_work):
        lm = CharLM(V, "lstm", H, threads=2)
        lm.MIN_SHARD_WORK = min_shard_work
        params, opt, clip = lm.init_params(np.random.default_rng(0)), Adam(1e-3), NormClip(5.0)

        def run():
            for b in data:
                _, grads, _ = lm.loss_and_grads(params, b.x, b.y, b.mask)
                clip(grads)
                opt.step(params, grads)
        return lambda: ms(run, 5) / len(data)
    out["training step, one shard (engine at B = 32)"] = training(CharLM.MIN_SHARD_WORK)()
    out["training step, two batch shards in threads"] = training(1)()
    return out


def unpacked_kernels(H, sizes):
    """Per-step forward products through OpenBLAS's no-copy kernels, if NumPy's OpenBLAS exports them."""
    import ctypes
    import glob

    libs = glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "libscipy_openblas*.so"))
    lib = ctypes.CDLL(libs[0]) if libs else None
    if lib is None or not hasattr(lib, "sgemm_direct_SKYLAKEX"):
        return {}
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    direct = lib.sgemm_direct_SKYLAKEX            # row-major C (m, n) = A (m, k) · B (k, n), no copies
    direct.argtypes, direct.restype = [i64, i64, i64, ptr, i64, ptr, i64, ptr, i64], None
    small = lib.sgemm_small_kernel_b0_nn_SKYLAKEX  # column-major C = alpha A B (beta 0), no copies
    small.argtypes, small.restype = [i64, i64, i64, ptr, i64, f32, ptr, i64, ptr, i64], ctypes.c_int
    rng = np.random.default_rng(0)
    G = 4 * H
    W, h = rng.standard_normal((H, G), dtype=np.float32), rng.standard_normal((B, H), dtype=np.float32)
    out = np.empty((B, G), np.float32)
    W_, h_, out_ = W.ctypes.data, h.ctypes.data, out.ctypes.data
    forms = {"NumPy (packs Wh)": lambda s, n: np.matmul(h[:n], W, out=out[:n]),
             "sgemm_direct": lambda s, n: direct(n, G, H, h_, H, W_, G, out_, G),
             "small-matrix kernel": lambda s, n: small(G, n, H, W_, G, 1.0, h_, H, out_, G)}
    for form in forms.values():                   # each computes h W: checked against NumPy's
        out[:] = 0
        form(0, B)
        assert np.allclose(out, h @ W, rtol=1e-3, atol=1e-2)
    result = {}
    with threadpool_limits(1):
        for name, form in forms.items():
            result[f"forward products, 1 thread: {name}"] = bench.seconds_per_batch(form, sizes) * 1e3
    return result


def main():
    V, data = bench.batches(B, BATCHES)
    sizes = bench.step_sizes(data)
    steps = sum(len(n) for n in sizes) / len(sizes)
    print(f"names batches of {B}: {sum(sum(n) for n in sizes) / len(sizes):.0f} characters, {steps:.1f} steps per batch")
    for H in (256, 512):
        print(f"\nLSTM H{H} (ms per batch)")
        for k, v in {**transposed(H, sizes), **unit_split(H, sizes, V, data),
                            **unpacked_kernels(H, sizes)}.items():
            print(f"  {k:50s} {v:7.3f}", flush=True)


if __name__ == "__main__":
    main()
