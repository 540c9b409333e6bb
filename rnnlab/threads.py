"""Threads for the engine: a process-wide pool for batch shards, BLAS held to one thread while the shards
(or the processes of a unit split, ``rnnlab.split``) run — each takes a core instead —, and how many CPUs
a run may use."""

from __future__ import annotations

import contextlib
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

_POOLS: dict[int, ThreadPoolExecutor] = {}
_BLAS: ThreadpoolController | None = None


def pool(n: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``n`` threads (made on first use, kept)."""
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="rnnlab-shard")
    return _POOLS[n]


def one_blas_thread():
    """A context in which BLAS runs single-threaded (nothing to do while ``hold_one_blas_thread`` holds it
    there: entering a limit costs ~20 µs, paid twice a batch by a unit split's parent otherwise)."""
    return contextlib.nullcontext() if _HELD else _limit_to_one()


def _controller() -> ThreadpoolController:
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS


def _limit_to_one():
    """BLAS limited to one thread (entered already: a context whose exit, or ``restore_original_limits``,
    gives the threads back)."""
    return _controller().limit(limits=1, user_api="blas")


# OpenBLAS's AVX-512 kernels (those it picks on AVX-512 CPUs, AMD's Zen 4 included) compute a float32 product of
# at most this many multiply-adds (M·N·K) with a "small matrix" kernel that reads its operands where they are
# instead of packing them first: for a recurrence's narrow steps on one thread, 1.2–4.5x the packed product's
# speed (measured: experiments/benchmarks/README.md, session 23). Its other kernels have no such path.
SMALL_KERNEL_MNK = 1_000_000
SMALL_KERNEL_CORES = ("SkylakeX", "Cooperlake", "SapphireRapids")


def small_product_limit(dtype) -> int:
    """The size (M·N·K) up to which NumPy's BLAS computes a ``dtype`` product with its small-matrix kernel and
    that kernel is the faster choice: ``SMALL_KERNEL_MNK`` for float32 on OpenBLAS's AVX-512 kernels while BLAS
    runs on one thread (as in a unit split's processes and the shards' threads; on two, the packed product's
    threads win from ~24 rows); 0 otherwise. A fixed rule, not a timing: the same run computes the same."""
    blas = _numpy_blas_with_small_kernel()
    return SMALL_KERNEL_MNK if np.dtype(dtype) == np.float32 and blas and blas.get_num_threads() == 1 else 0


@functools.cache
def _numpy_blas_with_small_kernel():
    """NumPy's BLAS, as threadpoolctl controls it, if it is OpenBLAS on its AVX-512 kernels; else None
    (looked up once: which library NumPy loaded and the kernels it picked do not change in a process)."""
    blas = [lib for lib in _controller().lib_controllers if lib.user_api == "blas" and "numpy" in lib.filepath]
    ok = (len(blas) == 1 and blas[0].internal_api == "openblas"
          and getattr(blas[0], "architecture", None) in SMALL_KERNEL_CORES)
    return blas[0] if ok else None


_HELD: list = []      # [count, the limit object] while something holds BLAS at one thread (hold_one_blas_thread)


def hold_one_blas_thread() -> None:
    """Keep BLAS at one thread in this process until as many ``release_blas_threads`` calls (counted: the
    last one restores the threads there were). For the parent of a unit split (``rnnlab.split``): a BLAS
    call on two threads between its batches would leave OpenBLAS's second thread spinning for ~0.1 s on
    the core the split's second process computes on."""
    if not _HELD:
        limit = one_blas_thread()
        limit.__enter__()
        _HELD[:] = [0, limit]
    _HELD[0] += 1


def release_blas_threads() -> None:
    if _HELD:
        _HELD[0] -= 1
        if _HELD[0] == 0:
            _HELD.pop().restore_original_limits()
            _HELD.clear()


@contextlib.contextmanager
def blas_threads_back(wanted: bool = True):
    """A context in which BLAS has its threads back while ``hold_one_blas_thread`` holds it at one, held
    again on leaving: for work the split's second process takes no part in — evaluation between training
    batches, whose forward passes run in this process while the other sleeps, its core idle. (Worth it
    only for wide products: after the last two-thread call, OpenBLAS's second thread spins idle for a
    while, on the core the split's next batch needs.) ``wanted`` False: nothing changes."""
    if not (_HELD and wanted):
        yield
        return
    _HELD[1].restore_original_limits()
    try:
        yield
    finally:
        _HELD[1] = _limit_to_one()


def available_cpus() -> int:
    """The CPUs this process may use: those it may run on, and no more than ``OMP_NUM_THREADS`` when that
    is set — as joblib sets it in the workers of parallel trials (``hydra/launcher=parallel``), and batch
    schedulers do — so that parallel trials do not each take every core."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cpus, int(limit))) if limit.isdigit() and int(limit) > 0 else cpus
