"""A training batch's hidden units split between two processes: each computes the forward and backward
pass of half of the units, with one BLAS thread and its own interpreter lock.

Why: NumPy runs every element-wise pass on one core, and at the narrow steps of a recurrence (n ≤ 32
rows) BLAS splits a product between its threads poorly; threads of one process share one interpreter
lock, and splitting the units between them costs more in hand-overs than it gains (measured:
experiments/benchmarks/README.md). Two processes share nothing but a few arrays in shared memory, and
meet at a barrier once per step, a spin on a counter each (a few microseconds): each does half of the
products (with its half of Wh's columns) and half of the element-wise work. This is model parallelism
over the hidden units, as in Megatron-LM's column-parallel layers:

    forward, step t (process k, units U_k):  z_k = x_t Wx[:, U_k] + h_{t-1} Wh[:, U_k] + b[U_k]
                                             h_t[U_k], c_t[U_k] from z_k            → shared h_t; barrier
    backward, step t:                        dz_k from dh_t[U_k], dc_t[U_k]
                                             dz_k Wh[U_j, U_k]ᵀ (n, H/2), shared    → barrier
                                             dh_{t-1}[U_k] = dz_k Wh[U_k, U_k]ᵀ + dz_j Wh[U_k, U_j]ᵀ

(U_k: process k's units, or their columns in all of the cell's gates; j: the other process.) Each
process does the part of a step that does not need the other's result while it waits for it: in the
forward pass, h_t[U_k] Wh[U_k, U_k] as soon as h_t[U_k] is written (``OverlappedForward``); in the
backward, its own units' part after it has shared the other's (``Share.exchanging``).

Narrow layers split a batch by its sequences instead (``UnitSplit.halves``, chosen by
``CharLM.halves_pay``): each process runs the whole network — forward, loss, backward — on every other
sequence of the batch, the child's gradients summed into the parent's. Nothing is exchanged within the
batch, so where a step's work is mostly per-call costs (up to 64 k multiply-adds a row in a step's
product: an LSTM of 128 units, an RNN of 256), halving its rows without a barrier at every step pays more
than halving its units with one. Models whose units cannot be split
(stacked layers, dropout of units, activation regularisation, the layer-normalised LSTM — the presets)
split their batches by sequences at any width: the child gets its sequences' states of every layer and
their dropout masks through shared memory.

The output layer is small (V columns): each process computes the logits, the loss and their gradient at
half of the positions, shares the gradient (a barrier), and computes its rows of Wy's gradient and its
units' part of the gradient reaching h from all of them. The process that calls ``loss_and_grads`` is
worker 0; worker 1 is a child forked on first use, which waits for a batch on a pipe between batches (it
takes no CPU while evaluation or sampling run). The result is the one-process result up to the rounding
of the sums (the same arithmetic, split by columns).

Used by ``CharLM.loss_and_grads`` when ``threads >= 2`` and ``CharLM.splits_units`` says the model allows
it (a cell that supports it — the RNN, the LSTM and the GRU, not the layer-normalised LSTM —, one layer,
one-hot input, no dropout of units, no activation regularisation), for batches with the work to pay
(``CharLM.halves_pay``, ``CharLM.split_pays``), on Linux on x86-64 (the spin barrier relies on x86's store order); then
``CharLM.update`` splits the optimizer step too. Faults: a worker that dies makes the other raise
``WorkerDied`` (no hang: the barrier checks its peer while it waits); an exception or a signal in the
parent (Ctrl-C) stops the child, and the next batch starts a new one; a child whose parent dies exits.
"""

from __future__ import annotations

import copy
import mmap
import os
import pickle
import platform
import select
import signal
import sys
import time
import warnings
import weakref

import numpy as np

from .cells.base import Layout, Packing, StepProduct, as_gates
from .flat import FlatParams
from .threads import hold_one_blas_thread, one_blas_thread, release_blas_threads

SPINS = 2000          # a barrier's spins (~0.1 ms) before it gives the core away between its checks
ALIVE_EVERY = 0.05    # seconds between a waiting barrier's checks that the other process is alive
IDLE_POLL = 0.002     # seconds the second process polls for its next command before it sleeps
ROWS_MAX_H = 256      # units up to which the backward's products are dz·Whᵀ in rows (``Share.exchanging``)


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
    ``own`` (a slice of 0 … H; the other's are ``theirs``), the shared state arrays, the meeting points
    of the two processes, and the recurrent products of its columns of Wh (``recurrent``, ``exchanging``),
    which overlap each wait with work that does not need the other process's result."""

    def __init__(self, k: int, owns: tuple, arrays: dict, alive):
        self.k, self.own, self.theirs, self.a, self.alive = k, owns[k], owns[1 - k], arrays, alive
        self.mine, self.other = arrays["count"][k], arrays["count"][1 - k]
        self.count = self.parity = 0

    def states(self, rows: int, count: int):
        """(``count`` shared state arrays (rows, H) — hs, then cs —, own), as ``cells.base.states`` gives
        them; the initial states are written by worker 0."""
        return (*(self.a[name][:rows] for name in ("hs", "cs")[:count]), self.own)

    def arrive(self) -> None:
        """Tell the other process that this one has reached its next meeting point: what it wrote before
        is visible to the other (x86 keeps stores in order)."""
        self.count += 1
        self.mine[0] = self.count

    def wait(self) -> None:
        """Wait until the other process has arrived as often as this one: a spin, then — when the other
        is late, as when more processes than cores share the machine — a wait that gives the core away
        between checks, and checks that the other is alive."""
        other = self.other
        for _ in range(SPINS):
            if other[0] >= self.count:
                return
        checked = time.monotonic()
        while other[0] < self.count:
            os.sched_yield()
            if time.monotonic() - checked > ALIVE_EVERY:
                self.alive()
                checked = time.monotonic()

    def sync(self) -> None:
        """Arrive, and wait for the other process to arrive too."""
        self.arrive()
        self.wait()

    def recurrent(self, Wh, G: int, pk: Packing) -> "OverlappedForward":
        """The forward pass's h_{t-1} Wh for this process's columns of Wh (see ``OverlappedForward``)."""
        return OverlappedForward(self, Wh, G, pk)

    def exchanging(self, Wh):
        """``back(dz, out)``: ``out`` receives dh_{t-1} of this process's units from the step's gradients of
        its gates dz (n, G*h) and its columns of Wh (H, G*h): dz Wh[own]ᵀ plus the other process's part,
        dz' Wh'[own]ᵀ. The part the other needs is computed first and shared, so that the other's wait
        for it overlaps this process's own part. Each product in the faster of two forms (measured:
        experiments/benchmarks/README.md, sessions 12 and 16): up to ``ROWS_MAX_H`` units, dz times the
        two blocks of Whᵀ, BLAS reading the blocks transposed in place (per-batch contiguous copies of them
        measured 1–1.5 % slower for the LSTM at 256 units); above, Wh[units] dzᵀ (h, n), the sum read
        transposed."""
        P, h = self.a["P"], Wh.shape[0] // 2
        if Wh.shape[0] <= ROWS_MAX_H:
            mine, theirs = (Wh[units].T for units in (self.own, self.theirs))    # BLAS reads them transposed

            def back(dz, out):
                n = len(out)
                np.matmul(dz, theirs, out=P[self.k, self.parity, :n * h].reshape(n, h))
                self.arrive()                 # two buffers each, used in turn: a process that runs
                np.matmul(dz, mine, out=out)  # ahead writes the other one
                self.wait()
                out += P[1 - self.k, self.parity, :n * h].reshape(n, h)
                self.parity ^= 1
        else:
            mine, theirs, cols = Wh[self.own], Wh[self.theirs], np.empty(P.shape[-1], Wh.dtype)

            def back(dz, out):
                n = len(out)
                np.matmul(theirs, dz.T, out=P[self.k, self.parity, :n * h].reshape(h, n))
                self.arrive()
                part = np.matmul(mine, dz.T, out=cols[:n * h].reshape(h, n))
                self.wait()
                np.add(part.T, P[1 - self.k, self.parity, :n * h].reshape(h, n).T, out=out)
                self.parity ^= 1
        return back


class OverlappedForward:
    """``fwd(h)`` → h_{t-1} Wh for a process's columns of Wh (H, G*h), gate-major (G, n, h) (a view, valid
    until the next call), for the steps of ``pk`` in order; the cell calls ``written(h_t)`` once it has
    written its units of each step's states.

        h_{t-1} Wh = h_{t-1}[own] Wh[own] + h_{t-1}[theirs] Wh[theirs]

    ``written`` tells the other process, then computes the first term for the next step at once (its
    rows of h are this process's); ``fwd`` then waits for the other's units and adds the second. A
    process that is ahead spends its wait on half of the next product instead of spinning.
    """

    def __init__(self, share: Share, Wh, G: int, pk: Packing):
        self.share, self.G, self.whole = share, G, StepProduct(Wh)
        self.mine, self.theirs = StepProduct(Wh[share.own]), StepProduct(Wh[share.theirs])
        self.rows, self.late = (np.empty((pk.B, Wh.shape[1]), Wh.dtype) for _ in range(2))
        self.next_rows = iter([n for _, n in pk.steps[1:]])
        self.started = False              # the first term of the next step is in ``rows``

    def __call__(self, h):
        n = len(h)
        rows = self.rows[:n]
        if not self.started:              # the initial states: written before the batch started
            return as_gates(self.whole(h, rows), self.G)
        self.share.wait()
        rows += self.theirs(h[:, self.share.theirs], self.late[:n])
        self.started = False
        return as_gates(rows, self.G)

    def written(self, h) -> None:
        """This process's units of h_t (rows of ``h``) are written."""
        self.share.arrive()
        n = next(self.next_rows, 0)
        if n:
            self.mine(h[:n, self.share.own], self.rows[:n])
            self.started = True
        else:                             # the last step: whoever reads the states next needs all of them
            self.share.wait()


class UnitSplit:
    """The two workers of a model (see the module docstring): ``loss_and_grads`` runs a batch, ``update``
    an optimizer step.

    The child sees the memory that was shared when it was forked: the per-batch arrays (made for a
    capacity of sequences and steps) and the flat buffers made by ``alloc`` — the parameters (moved
    there by the first ``update``), the gradients ``loss_and_grads`` returns (one buffer, overwritten by
    the next call) and the optimizer's moments (made like the parameters; the parameters' buffer and the
    moments' are spares made before the first fork, ``SPARES``). A batch larger than the capacity, or a
    buffer made since the fork, starts a new child (in a training run: at its first batch, and when a batch
    outgrows the arrays; a fork and the child's first batches cost ~0.13 s on a 2-core VM).
    """
    HEADROOM = 1.25           # per-batch arrays are made this much larger than the batch that needs them
    OPT_BYTES = 1 << 16       # room for the pickled optimizer (its options and step count)
    SPARES = 4                # parameter-sized buffers made before the first fork: the parameters and up to three
                              # moments of the optimizer (Adam's two and its average) find the child knows them

    def __init__(self, lm):
        self.lm, self.H = lm, lm.hidden_size
        half = self.H // 2
        self.owns = (slice(0, half), slice(half, self.H))
        self.child, self.capacity = None, (0, 0)
        self.buffers = weakref.WeakValueDictionary()    # key → a flat buffer in shared memory (``alloc``)
        self._key_by_id = {}                            # id(buffer) → its key (checked: ids are reused)
        self.forked_with = set()                        # the keys the child was forked with
        self.grads = self.theirs = None
        self.spares = []                                # buffers for ``alloc`` that the child knows (``_start``)
        self.starts = 0                                 # children started (for tests and benchmarks)

    def alloc(self, n: int, dtype):
        """A zeroed flat buffer in shared memory that the child can use (``FlatParams(…, alloc=…)``): one of
        the spares made before the child was forked, if one has this size and type, else a new one."""
        for i, spare in enumerate(self.spares):
            if spare.size == n and spare.dtype == np.dtype(dtype):
                return self.spares.pop(i)                 # (never written: still zeros)
        flat = _shared((n,), dtype)
        self._last_key = getattr(self, "_last_key", 0) + 1      # never reused: the child knows keys by number
        self.buffers[self._last_key] = flat
        self._key_by_id[id(flat)] = self._last_key
        return flat

    def key_of(self, flat) -> int | None:
        """The key of a buffer made by ``alloc``, or None (looked up by identity: a few of these a batch)."""
        k = self._key_by_id.get(id(flat))
        return k if k is not None and self.buffers.get(k) is flat else None

    # ------------------------------------------------------------------------------ the child process
    def _ready(self, B: int, N: int, flats) -> list[int]:
        """A child that can run a batch of B sequences and N steps and sees ``flats``; their keys. (A child
        that ended between batches — it holds nothing — is replaced.)"""
        keys = [self.key_of(f) for f in flats]
        if self.child is not None and os.waitpid(self.child[0], os.WNOHANG) != (0, 0):
            self._reaped()
        outgrown = B > self.capacity[0] or N > self.capacity[1]
        if outgrown:
            self.capacity = (max(self.capacity[0], int(B * self.HEADROOM) + 1),
                             max(self.capacity[1], int(N * self.HEADROOM) + 1))
        if self.child is None or outgrown or not set(keys) <= self.forked_with:
            self._start(*self.capacity)
        return keys

    def _start(self, B: int, N: int) -> None:
        """Per-batch arrays for batches of up to B sequences and N real steps, and a child that sees them."""
        self.stop()
        dt, H = self.lm.dtype, self.H
        self.a = {"count": _shared((2, 8), np.int64), "ints": _shared((16 + B + 2 * N,), np.int64),
                  "floats": _shared((4,), np.float64), "opt": _shared((self.OPT_BYTES,), np.uint8),
                  "hs": _shared((B + N, H), dt), "cs": _shared((B + N, H), dt), "P": _shared((2, 2, B * (H // 2)), dt),
                  "dlogits": _shared((self.lm.vocab_size, N), dt)}
        if self.starts == 0 and getattr(self, "layout", None):   # the parameters' move into shared memory and
            size = sum(int(np.prod(shape)) for _, shape in self.layout)      # the optimizer's moments, at the
            self.spares = [self.alloc(size, dt) for _ in range(self.SPARES)]    # first step, need no new child
        self.forked_with = set(self.buffers.keys())
        read, write = os.pipe()
        parent = os.getpid()
        with warnings.catch_warnings():     # Python 3.12+ warns of fork in a process with threads: the
            warnings.simplefilter("ignore", DeprecationWarning)    # child only runs NumPy code, no locks
            pid = os.fork()
        if pid == 0:                        # the child: serve until the pipe closes
            os.close(write)
            self._serve(read, parent)
        os.close(read)
        self.starts += 1
        self.child = (pid, write)
        self.share = Share(0, self.owns, self.a, self._child_alive)
        hold_one_blas_thread()              # while the child lives (released when it is stopped)
        self._finalizer = weakref.finalize(self, _stop, pid, write)

    def _serve(self, read: int, parent: int) -> None:
        code = 1
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)    # the parent's to handle (it then stops this process);
                                                      # not the parent's handlers (runs, tracking stores)

            def parent_alive():
                if os.getppid() != parent:
                    os._exit(1)
            share = Share(1, self.owns, self.a, parent_alive)
            views = {}            # key → named views of a shared buffer (a key's buffer never changes)
            with one_blas_thread():
                os.set_blocking(read, False)
                while True:
                    op = _next_op(read, parent_alive)
                    ints, floats = self.a["ints"], self.a["floats"]
                    if op == b"b":
                        B, N, kp, kg = (int(v) for v in ints[:4])
                        params, grads = self._views(views, kp, kg)
                        lengths, ids, y = ints[16:16 + B], ints[16 + B:16 + B + N], ints[16 + B + N:16 + B + 2 * N]
                        self._half(share, params, grads, ids, y, Packing(lengths), float(floats[0]))
                    elif op == b"s":
                        self._serve_half(share, views, ints, floats)
                    elif op == b"u":
                        size = int(ints[0])
                        optimizer = pickle.loads(self.a["opt"][:size].tobytes())
                        p, g, *slots = (self.buffers[int(k)] for k in ints[8:10 + len(optimizer.slots)])
                        lo, hi, n_matrix = (int(v) for v in ints[1:4])
                        optimizer.update_range(p, g, dict(zip(optimizer.slots, slots)), n_matrix, lo, hi)
                        share.sync()
                    else:
                        break
            code = 0
        finally:
            os._exit(code)

    def _views(self, views: dict, *keys: int) -> list:
        """The child's named views (``FlatParams``) of the shared buffers of ``keys``, made on first use and
        kept in ``views`` (a key's buffer never changes)."""
        for k in keys:
            if k not in views:
                views[k] = FlatParams.over(self.buffers[k], self.layout)
        return [views[k] for k in keys]

    def _child_alive(self) -> None:
        if os.waitpid(self.child[0], os.WNOHANG) != (0, 0):
            self._reaped()
            raise WorkerDied("the unit split's worker process ended in the middle of a batch")

    def _reaped(self) -> None:
        """Forget a child that has ended and been reaped (its pid may be reused: never signal it again)."""
        self._finalizer.detach()
        self._finalizer = None
        os.close(self.child[1])
        release_blas_threads()
        self.child = None

    def stop(self) -> None:
        """End the child (if any); the next call starts a new one."""
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer()
            self._finalizer = None
        self.child = None

    def _run(self, op: bytes, work):
        """Wake the child for ``op`` and do this process's ``work()``; on any error or signal (Ctrl-C)
        the child is stopped (the next call starts a new one)."""
        try:
            os.write(self.child[1], op)
            with one_blas_thread():
                return work()
        except BaseException:
            self.stop()
            raise

    # --------------------------------------------------------------------------------- one batch
    def loss_and_grads(self, params, ids, y, pk: Packing, state0, scale: float):
        """Forward and backward of the packed batch (ids, y (N,), initial state in packed order, None for
        zeros): returns (summed NLL, gradients of the summed NLL / ``scale`` — a ``FlatParams`` in shared
        memory, overwritten by the next call —, final state in packed order)."""
        params = self._in_shared_memory(params)
        B, N = pk.B, pk.N
        kp, kg = self._ready(B, N, (params.flat, self.grads.flat))
        ints, a = self.a["ints"], self.a
        ints[:4] = B, N, kp, kg
        ints[16:16 + B], ints[16 + B:16 + B + N], ints[16 + B + N:16 + B + 2 * N] = pk.lengths, ids, y
        a["floats"][0] = scale
        for arr, s0 in zip((a["hs"], a["cs"]), state0 or (0, 0)):
            arr[:B] = s0
        total, final = self._run(b"b", lambda: self._half(self.share, params, self.grads, ids, y, pk, scale))
        return total, self.grads, final

    def _in_shared_memory(self, params):
        """``params`` where the child can read them (a staged copy if they are not yet there), with the
        gradient buffer ``grads`` made like them and their layout noted for the child."""
        if not (isinstance(params, FlatParams) and self.key_of(params.flat) is not None):
            params = self._staged(params)        # not (yet) in shared memory: a copy there
        if self.grads is None or not self.grads.same_layout(params):
            self.grads = FlatParams.like(params, fill=0, same_memory=True)
        self.layout = params.layout
        return params

    def _staged(self, params):
        """``params`` copied into a flat buffer in shared memory (kept for the next call)."""
        staged = getattr(self, "_stage", None)
        if staged is None or set(staged) != set(params) or staged.flat.dtype != self.lm.dtype:
            staged = self._stage = FlatParams(params, dtype=self.lm.dtype, alloc=self.alloc)
        else:
            for name, value in params.items():
                staged[name] = value
        return staged

    def _half(self, share: Share, params, grads, ids, y, pk: Packing, scale: float):
        """One worker's part of a batch: its units' forward and backward, the loss, its columns of the
        cell's gradients and rows of Wy's (and by's, worker 0), written into ``grads``. Returns (summed
        NLL, final state) (worker 0's use)."""
        from .model import output_gradient
        share.parity = 0          # (the counters run on from batch to batch: both sync as often in each)
        lm, B, N, own = self.lm, pk.B, pk.N, share.own
        cell = {name[3:]: w for name, w in params.items() if name.startswith("l0.")}
        G = {name: w.shape[-1] // self.H for name, w in cell.items()}    # blocks of H columns: gates (or 1)
        p = {name: own_copy(w, G[name], own) for name, w in cell.items()}
        out = {name: lm.cell.workspace("split d" + name, p[name].shape, p[name].dtype) for name in cell}
        Wy = params["Wy"]
        (_, final), cache = lm.cell.forward_packed(ids, None, p, pk, share=share)
        # The output layer: each process the loss and logits' gradient of half of the positions, shared;
        # then each its rows of Wy's gradient and its units' part of the gradient reaching h, from all.
        top, dlogits, losses = self.a["hs"][B:B + N], self.a["dlogits"][:, :N], self.a["floats"][1:3]
        rows = slice(0, N // 2) if share.k == 0 else slice(N // 2, N)
        logits = top[rows] @ Wy
        logits += params["by"]
        losses[share.k], dlogits[:, rows] = output_gradient(logits, y[rows], scale, lm.dtype)
        share.sync()
        np.matmul(top[:, own].T, dlogits.T, out=grads["Wy"][own])
        if share.k == 0:
            np.sum(dlogits, axis=1, out=grads["by"])
        dhs = np.matmul(dlogits.T, Wy[own].T)
        total = float(losses.sum())
        lm.cell.backward_packed(dhs, cache, None, out=out, state_grad=False)
        for name in cell:
            units_of(grads[f"l0.{name}"], G[name], own)[...] = units_of(out[name], G[name], slice(None))
        share.sync()                                   # both have written their gradients
        return total, final

    # ------------------------------------------------------------------------ or its sequences split
    def halves(self, params, x, y, mask, columns, state0, scale: float, n: float, units=None):
        """Forward and backward of a padded batch (x, y, mask (T, B); ``state0`` per layer or None; ``units``
        the batch's dropout masks of units, ``Masks.units``, or None) with its sequences split between the
        two processes — ``columns``: two arrays of column indices, this process's first — each running
        ``CharLM._grads`` on its columns with the whole network (no step waits for the other process: this
        is data parallelism, as in PyTorch's DistributedDataParallel). Returns (summed NLL, the sum of the
        halves' gradients — a ``FlatParams`` in shared memory, overwritten by the next call —, the final
        states of each half (this process's first))."""
        from .model import _rows
        params = self._in_shared_memory(params)
        if self.theirs is None or not self.theirs.same_layout(params):
            self.theirs = FlatParams.like(params, fill=0, same_memory=True)   # the child's half
        mine, theirs = columns
        T, B, B1, L, H = len(x), len(x[0]), len(theirs), self.lm.num_layers, self.H
        # The child's columns go through the shared ints (ids, targets, mask, then each mask of units' steps:
        # T, 1 when locked, 0 for none) and hs/cs (``_layer_states``, then ``_unit_masks``).
        steps = [0 if d is None else len(d) for d in units or [None] * (L + 1)]
        end = 16 + 3 * T * B1
        ints_needed = 3 * T * B1 + L + 1                    # room: 2·N + B ints after the header, (B + N)·H floats
        floats_needed = L * B1 * H + sum(self._mask_sizes(B1, steps))
        N = max(-(-(ints_needed - B) // 2), -(-floats_needed // H) - B)
        kp, kg, _ = self._ready(B, N, (params.flat, self.theirs.flat, self.grads.flat))   # (the last for ``update``)
        ints, a = self.a["ints"], self.a
        ints[:5] = T, B1, kp, kg, state0 is not None
        ints[16:end].reshape(3, T, B1)[...] = x[:, theirs], y[:, theirs], mask[:, theirs] != 0
        ints[end:end + L + 1] = steps
        for d, shared in zip(units or (), self._unit_masks(L, B1, steps)):
            if d is not None:
                np.take(d, theirs, axis=1, out=shared, mode="clip")    # (the indices are valid: "clip"
                                                                        # writes straight into ``shared``)
        a["floats"][0], a["floats"][3] = scale, n
        for k, layer in enumerate(_rows(state0, theirs) or ()):
            for arr, s0 in zip(self._layer_states(k, B1), layer):
                arr[...] = s0

        def work():
            total, grads, final, _ = self.lm._grads(params, x[:, mine], y[:, mine],
                                                    Layout(mask[:, mine], T, len(mine)), _rows(state0, mine),
                                                    None, units and [d if d is None else d[:, mine] for d in units],
                                                    scale, n)
            self.share.sync()                                     # the child's half is written
            if ints[5]:
                raise pickle.loads(self.a["opt"][:int(ints[5])].tobytes())
            np.add(grads.flat, self.theirs.flat, out=self.grads.flat)
            theirs_final = [tuple(arr.copy() for arr in self._layer_states(k, B1)) for k in range(L)]
            return total + float(a["floats"][2]), final, theirs_final
        total, final, theirs_final = self._run(b"s", work)
        return total, self.grads, (final, theirs_final)

    def _serve_half(self, share: Share, views: dict, ints, floats) -> None:
        """The child's side of ``halves``: its columns' forward and backward, written into shared memory."""
        T, B1, kp, kg, has_state = (int(v) for v in ints[:5])
        lm = self.lm
        L, end = lm.num_layers, 16 + 3 * T * B1
        try:
            params, grads = self._views(views, kp, kg)
            x, y, mask = ints[16:end].reshape(3, T, B1)
            state0 = [tuple(a.copy() for a in self._layer_states(k, B1)) for k in range(L)] if has_state else None
            units = self._unit_masks(L, B1, [int(v) for v in ints[end:end + L + 1]])
            total, half, final, _ = lm._grads(params, x, y, Layout(mask, T, B1), state0, None,
                                              units if any(d is not None for d in units) else None,
                                              float(floats[0]), float(floats[3]))
            np.copyto(grads.flat, half.flat)
            for k, layer in enumerate(final):
                for arr, s in zip(self._layer_states(k, B1), layer):
                    arr[...] = s
            floats[2], ints[5] = total, 0
        except Exception as error:  # noqa: BLE001 - any error of its half (e.g. an id outside the vocabulary)
            self._report(error, ints)    # is raised in the parent, as if it had been in its own half
        share.sync()

    # Where ``halves`` passes the child's columns' states and masks of units: layer k's initial and final
    # states in rows k·B1 … (k+1)·B1 of the shared hs (and cs), then — in hs, flat — the masks of units.
    def _layer_states(self, k: int, B1: int) -> list:
        """Layer k's rows of the shared state arrays (hs, and cs for an LSTM)."""
        return [arr[k * B1:(k + 1) * B1] for arr in (self.a["hs"], self.a["cs"])[:self.lm.cell.state_size]]

    def _mask_sizes(self, B1: int, steps: list) -> list:
        """The values in each mask of units of B1 sequences and ``steps[j]`` steps (0: no mask): j = 0 the
        embedding's output, then each layer's."""
        return [n * B1 * ((self.lm.embedding_size or 0) if j == 0 else self.H) for j, n in enumerate(steps)]

    def _unit_masks(self, L: int, B1: int, steps: list) -> list:
        """The shared views (steps[j], B1, width) of the masks of units, after the L layers' states; None
        where steps[j] is 0 (no mask)."""
        arena, views = self.a["hs"].reshape(-1)[L * B1 * self.H:], []
        for n, size in zip(steps, self._mask_sizes(B1, steps)):
            views.append(arena[:size].reshape(n, B1, -1) if n else None)
            arena = arena[size:]
        return views

    def _report(self, error: Exception, ints) -> None:
        """The child's exception, pickled where the parent reads it after the barrier (``ints[5]``: its size)."""
        try:
            blob = pickle.dumps(error)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its message
            blob = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
        blob = blob if len(blob) <= self.OPT_BYTES else pickle.dumps(RuntimeError(str(error)[:1000]))
        self.a["opt"][:len(blob)] = np.frombuffer(blob, np.uint8)
        ints[5] = len(blob)

    # ------------------------------------------------------------------------------ optimizer step
    def update(self, optimizer, params, grads) -> None:
        """``optimizer.step(params, grads)`` with its element-wise passes split between the two processes
        (the same result: the update is element-wise). The first call moves ``params`` into shared memory
        (``FlatParams.relocate``), which the optimizer's moments, made like them, then share. Gradients of
        a batch that ran in one process (too little work to split, or sharded) are copied into the shared
        gradient buffer first."""
        if not (isinstance(params, FlatParams) and params.same_layout(grads) and self.grads is not None
                and self.grads.same_layout(grads)):
            optimizer.step(params, grads)
            return
        if self.key_of(grads.flat) is None:       # a batch that ran in one process: its gradients where the
            np.copyto(self.grads.flat, grads.flat)          # child sees them (one pass; the split halves ~12)
            grads = self.grads
        if self.key_of(params.flat) is None:
            params.relocate(self.alloc)
        optimizer.step(params, grads, shared=self._split_update)

    def _split_update(self, optimizer, params, grads, buffers) -> None:
        flats = [params.flat, grads.flat] + [buffers[slot] for slot in optimizer.slots]
        if any(self.key_of(f) is None for f in flats):        # moments made before the move: remake them
            optimizer._flat = None
            buffers = optimizer._flat_buffers(params)
            flats[2:] = [buffers[slot] for slot in optimizer.slots]
        keys = self._ready(0, 0, flats)
        n = params.flat.size
        mid = n // 2 // 16 * 16          # halves (on a 64-byte line: no cache line written by both processes)
        spec = copy.copy(optimizer)                          # its options and step count, not its buffers
        spec.__dict__ = {k: v for k, v in spec.__dict__.items() if k not in ("buffers", "_flat", "_work")}
        blob = pickle.dumps(spec)
        if len(blob) > self.OPT_BYTES:
            raise ValueError(f"the optimizer pickles to {len(blob)} bytes, more than the {self.OPT_BYTES} "
                             "the unit split has room for")
        ints = self.a["ints"]
        ints[:4] = len(blob), mid, n, params.n_matrix
        ints[8:8 + len(keys)] = keys
        self.a["opt"][:len(blob)] = np.frombuffer(blob, np.uint8)

        def work():
            optimizer.update_range(params.flat, grads.flat, buffers, params.n_matrix, 0, mid)
            self.share.sync()                                # the child has done its part
        self._run(b"u", work)


def _next_op(read: int, alive) -> bytes:
    """The next command byte from the (non-blocking) pipe: polled for ``IDLE_POLL`` seconds — a training
    loop's next batch or optimizer step comes within them, and a sleeping process would take a wake-up
    (tens to hundreds of microseconds on a virtual machine) to start it —, then waited for."""
    end = time.monotonic() + IDLE_POLL
    while time.monotonic() < end:
        try:
            return os.read(read, 1)
        except BlockingIOError:
            os.sched_yield()
    while True:
        select.select([read], [], [], ALIVE_EVERY * 20)
        try:
            return os.read(read, 1)
        except BlockingIOError:
            alive()


def units_of(w, G: int, units: slice):
    """The columns of ``units`` in each of the G gates of a (…, G*H) array: a view (…, G, len(units))."""
    return w.reshape(*w.shape[:-1], G, -1)[..., units]


def own_copy(w, G: int, units: slice):
    """A contiguous copy of ``units_of(w, G, units)`` as (…, G*len(units)): the gates' columns of those
    units, in the cell's fused layout."""
    part = units_of(w, G, units)
    return np.ascontiguousarray(part).reshape(*w.shape[:-1], -1)


def _stop(pid: int, write: int) -> None:
    """Close the child's pipe (it exits at its next read), make sure it ends, reap it; BLAS's threads back."""
    release_blas_threads()
    try:
        os.close(write)
    except OSError:
        pass
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
