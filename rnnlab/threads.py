"""Threads for the engine: a process-wide pool for batch shards, BLAS held to one thread while the shards
(or the processes of a unit split, ``rnnlab.split``) run — each takes a core instead —, and how many CPUs
a run may use."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

_POOLS: dict[int, ThreadPoolExecutor] = {}
_BLAS: ThreadpoolController | None = None


def pool(n: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``n`` threads (made on first use, kept)."""
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="rnnlab-shard")
    return _POOLS[n]


def one_blas_thread():
    """A context in which BLAS runs single-threaded."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


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
