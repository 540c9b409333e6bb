"""Threads for the engine: a process-wide pool for batch shards, and BLAS held to one thread while the
shards run (each shard's thread takes a core instead)."""

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
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
