"""A training batch's hidden units split between two processes: each computes the forward and backward
pass of half of the units, with one BLAS thread and its own interpreter lock.

Why: NumPy runs every element-wise pass on one core, and at the narrow steps of a recurrence (n ≤ 32
rows) BLAS splits a product between its threads poorly; threads of one process share one interpreter
lock, and splitting the units between them costs more in hand-overs than it gains (measured:
experiments/benchmarks/README.md). Two processes share nothing but a few arrays in shared memory, and
meet at a barrier once per step, a spin on a counter each (a few microseconds): each does half of the
products (with its half of Wh's columns, which stays in its core's cache) and half of the element-wise
work. This is model parallelism over the hidden units, as in Megatron-LM's column-parallel layers:

    forward, step t (process k, units U_k):  z_k = x_t Wx[:, U_k] + h_{t-1} Wh[:, U_k] + b[U_k]
                                             h_t[U_k], c_t[U_k] from z_k            → shared h_t; barrier
    backward, step t:                        dz_k from dh_t[U_k], dc_t[U_k]
                                             P_k = dz_k Wh[:, U_k]ᵀ  (n, H), shared  → barrier
                                             dh_{t-1}[U_k] = P_0[:, U_k] + P_1[:, U_k]

(U_k: a unit's columns in all of the cell's gates.) The output layer is small (V columns): both processes
compute the logits and the softmax, each the gradients of its rows of Wy. The process that calls
``loss_and_grads`` is worker 0; worker 1 is a child forked on first use, which waits for a batch on a
pipe between batches (it takes no CPU while evaluation or sampling run). The result is the one-process
result up to the rounding of the sums (the same arithmetic, split by columns).

Used by ``CharLM.loss_and_grads`` when ``threads >= 2`` and ``CharLM.splits_units`` says the model allows
it (a cell that supports it — the LSTM —, one layer, one-hot input, no dropout of units, no activation
regularisation), on Linux on x86-64 (the spin barrier relies on x86's store order). Faults: a worker that
dies makes the other raise ``WorkerDied`` (no hang: the barrier checks its peer while it spins); an
exception or a signal in the parent (Ctrl-C) stops the child, and the next batch starts a new one.
"""

from __future__ import annotations

import mmap
import os
import platform
import signal
import sys
import warnings
import weakref

import numpy as np

from .cells.base import Packing
from .threads import one_blas_thread

SPINS_PER_CHECK = 1 << 14     # barrier spins between two checks that the other process is alive


class WorkerDied(RuntimeError):
    """The other process of a unit split ended in the middle of a batch."""


def available() -> bool:
    """Whether this platform can split units between processes (fork, and x86's total store order)."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64") and hasattr(os, "fork")


def _shared(shape, dtype):
    """A zeroed array in anonymous shared memory: a process forked after it is made sees the same memory."""
    n, dtype = int(np.prod(shape)), np.dtype(dtype)
    return np.frombuffer(mmap.mmap(-1, max(n * dtype.itemsize, 1)), dtype, n).reshape(shape)


class Share:
    """One process's side of a split, as a cell sees it (``forward_packed(…, share=…)``): its units
    ``own`` (a slice of 0 … H), the shared state arrays, the per-step barrier and the exchange of the
    backward's partial gradients."""

    def __init__(self, k: int, own: slice, arrays: dict, alive):
        self.k, self.own, self.a, self.alive = k, own, arrays, alive
        self.mine, self.other = arrays["count"][k], arrays["count"][1 - k]
        self.count = self.parity = 0

    def states(self, rows: int):
        """(hs, cs, own): the shared state arrays (rows, H), initial states first (written by worker 0)."""
        return self.a["hs"][:rows], self.a["cs"][:rows], self.own

    def sync(self) -> None:
        """Wait until the other process has reached the same point (both have called ``sync`` as often)."""
        self.count += 1
        self.mine[0] = self.count
        other, spins = self.other, 0
        while other[0] < self.count:
            spins += 1
            if spins % SPINS_PER_CHECK == 0:
                self.alive()

    def exchanging(self, back):
        """``back(dz, out)`` (a ``RecurrentBackward`` of this process's columns of Wh) turned into the
        split's: ``out`` receives dh_{t-1} of this process's units, the sum of both processes' parts."""
        P = self.a["P"]

        def exchange(dz, out):
            n = len(out)
            mine = P[self.k, self.parity, :n]      # two buffers each, used in turn: a process that runs
            back(dz, mine)                         # ahead writes the other one
            self.sync()
            np.add(mine[:, self.own], P[1 - self.k, self.parity, :n, self.own], out=out)
            self.parity ^= 1
        return exchange


class UnitSplit:
    """The two workers of a model (see the module docstring). ``loss_and_grads`` runs a batch."""
    HEADROOM = 1.25           # shared arrays are made this much larger than the batch that needs them

    def __init__(self, lm):
        self.lm, self.H = lm, lm.hidden_size
        half = self.H // 2
        self.owns = (slice(0, half), slice(half, self.H))
        self.child = None
        self.capacity = (0, 0)

    # ------------------------------------------------------------------------------ the child process
    def _start(self, B: int, N: int) -> None:
        """Shared arrays for batches of up to B sequences and N real steps, and a child that uses them."""
        self.stop()
        B, N = int(B * self.HEADROOM) + 1, int(N * self.HEADROOM) + 1
        lm, H, dt = self.lm, self.H, self.lm.dtype
        G, V, h1 = lm.cell.gates, lm.vocab_size, self.owns[1].stop - self.owns[1].start
        self.capacity = (B, N)
        self.a = a = {"count": _shared((2, 8), np.int64), "ints": _shared((3 + B + 2 * N,), np.int64),
                      "scale": _shared((1,), np.float64),
                      "hs": _shared((B + N, H), dt), "cs": _shared((B + N, H), dt), "P": _shared((2, 2, B, H), dt),
                      "Wx": _shared((V, G * h1), dt), "Wh": _shared((H, G * h1), dt), "b": _shared((G * h1,), dt),
                      "Wy": _shared((H, V), dt), "by": _shared((V,), dt),
                      "dWx": _shared((V, G * h1), dt), "dWh": _shared((H, G * h1), dt), "db": _shared((G * h1,), dt),
                      "dWy": _shared((h1, V), dt)}
        read, write = os.pipe()
        parent = os.getpid()
        with warnings.catch_warnings():     # Python 3.12+ warns of fork in a process with threads: the
            warnings.simplefilter("ignore", DeprecationWarning)    # child only runs NumPy code, no locks
            pid = os.fork()
        if pid == 0:                        # the child: serve batches until the pipe closes
            os.close(write)
            self._serve(read, parent)
        os.close(read)
        self.child = (pid, write)
        self.share = Share(0, self.owns[0], a, self._child_alive)
        self._finalizer = weakref.finalize(self, _stop, pid, write)

    def _serve(self, read: int, parent: int) -> None:
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's to handle
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)            # not the parent's handlers (runs, stores)

            def parent_alive():
                if os.getppid() != parent:
                    os._exit(1)
            share = Share(1, self.owns[1], self.a, parent_alive)
            with one_blas_thread():
                while os.read(read, 1) == b"b":
                    ints = self.a["ints"]
                    B, N = int(ints[0]), int(ints[1])
                    lengths, ids, y = ints[3:3 + B], ints[3 + B:3 + B + N], ints[3 + B + N:3 + B + 2 * N]
                    p = {k: self.a[k] for k in ("Wx", "Wh", "b", "Wy", "by")}
                    out = {"Wx": self.a["dWx"], "Wh": self.a["dWh"], "b": self.a["db"], "Wy": self.a["dWy"]}
                    self._half(share, p, ids, y, Packing(lengths), float(self.a["scale"][0]), out)
            code = 0
        finally:
            os._exit(code)

    def _child_alive(self) -> None:
        pid, _ = self.child
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            self.child = None
            self.stop()
            raise WorkerDied("the unit split's worker process ended in the middle of a batch")

    def stop(self) -> None:
        """End the child (if any); the next batch starts a new one."""
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer()
            self._finalizer = None
        self.child = None

    # --------------------------------------------------------------------------------- one batch
    def loss_and_grads(self, params, ids, y, pk: Packing, state0, scale: float, grads):
        """Forward and backward of the packed batch (ids, y (N,), initial state in packed order, None for
        zeros): returns (summed NLL, final state in packed order); ``grads`` (a ``FlatParams`` like
        ``params``) receives the gradients of the summed NLL / ``scale``."""
        B, N = pk.B, pk.N
        if self.child is None or B > self.capacity[0] or N > self.capacity[1]:
            self._start(B, N)
        a, G, own1 = self.a, self.lm.cell.gates, self.owns[1]
        ints = a["ints"]
        ints[:3] = B, N, 0
        ints[3:3 + B], ints[3 + B:3 + B + N], ints[3 + B + N:3 + B + 2 * N] = pk.lengths, ids, y
        a["scale"][0] = scale
        cell = ("Wx", "Wh", "b")
        for name in cell:
            units_of(a[name], G, slice(None))[...] = units_of(params[f"l0.{name}"], G, own1)
        a["Wy"][...], a["by"][...] = params["Wy"], params["by"]
        for arr, s0 in zip((a["hs"], a["cs"]), state0 or (0, 0)):
            arr[:B] = s0
        p = {name: own_copy(params[f"l0.{name}"], G, self.owns[0]) for name in cell}
        p["Wy"], p["by"] = params["Wy"], params["by"]
        out = {name: np.empty_like(p[name]) for name in cell}
        out["Wy"], out["by"] = grads["Wy"][self.owns[0]], grads["by"]
        try:
            os.write(self.child[1], b"b")
            with one_blas_thread():
                total, final = self._half(self.share, p, ids, y, pk, scale, out)
        except BaseException:
            self.stop()
            raise
        for name in cell:
            units_of(grads[f"l0.{name}"], G, self.owns[0])[...] = units_of(out[name], G, slice(None))
            units_of(grads[f"l0.{name}"], G, own1)[...] = units_of(a["d" + name], G, slice(None))
        grads["Wy"][own1] = a["dWy"]
        return total, final

    def _half(self, share: Share, p, ids, y, pk: Packing, scale: float, out):
        """One worker's part of a batch: its units' forward and backward, the loss, its rows of Wy's
        gradient (and by's, worker 0), into ``out``. Returns (summed NLL, final state) (worker 0's use)."""
        from .model import output_gradient
        share.parity = 0          # (the counters run on from batch to batch: both sync as often in each)
        lm, B, N, own = self.lm, pk.B, pk.N, share.own
        (_, final), cache = lm.cell.forward_packed(ids, None, p, pk, share=share)
        top = self.a["hs"][B:B + N]
        logits = top @ p["Wy"]
        logits += p["by"]
        total, dlogits = output_gradient(logits, y, scale, lm.dtype)
        np.matmul(top[:, own].T, dlogits.T, out=out["Wy"])
        if share.k == 0:
            np.sum(dlogits, axis=1, out=out["by"])
        dhs = np.matmul(dlogits.T, p["Wy"][own].T)
        lm.cell.backward_packed(dhs, cache, None, out=out)
        share.sync()                                   # both have written their gradients
        return total, final


def units_of(w, G: int, units: slice):
    """The columns of ``units`` in each of the G gates of a (…, G*H) array: a view (…, G, len(units))."""
    return w.reshape(*w.shape[:-1], G, -1)[..., units]


def own_copy(w, G: int, units: slice):
    """A contiguous copy of ``units_of(w, G, units)`` as (…, G*len(units)): the gates' columns of those
    units, in the cell's fused layout."""
    part = units_of(w, G, units)
    return np.ascontiguousarray(part).reshape(*w.shape[:-1], -1)


def _stop(pid: int, write: int) -> None:
    """Close the child's pipe (it exits at its next read), make sure it ends, reap it."""
    try:
        os.close(write)
    except OSError:
        pass
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
