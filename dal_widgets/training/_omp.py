"""Torch's intra-op threads for the calling thread only.

``torch.set_num_threads`` also sets the default every thread starts with, so a worker that
calls it changes threads it does not own. Torch's CPU ops run their loops in OpenMP parallel
regions, and OpenMP keeps the thread count per thread: :func:`thread_threads` sets it for the
calling thread alone, through the OpenMP runtime and the MKL that torch's own library uses.

Why a fit of a tiny model wants one thread: once another thread of the process has run a
parallel region (any notebook's main thread has), OpenMP holds more threads than there are
cores and stops spinning between regions, so each region pays a sleep and a wake-up. A head
fit runs a few hundred small regions: on 2 cores, 1,000 labels at D=384 took 130 ms at two
threads against 55 ms at one (and 45 ms at two in a process that ran nothing else).

Where torch's library, its OpenMP symbols or MKL's C interface cannot be found (macOS,
Windows, builds without MKL), or the runtime found is not the one torch counts threads with,
nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["thread_runtimes", "thread_threads"]

_cache: dict[str, Any] = {}
_lock = threading.Lock()


def _find() -> tuple[Any, Any]:
    """(OpenMP, MKL) entry points through torch's CPU library, each checked once, or None.

    Symbols are looked up through ``libtorch_cpu``'s own handle, which searches the library
    and then what it links, so they are those of the runtime torch uses, not of another
    OpenMP loaded by scikit-learn or numba.
    """
    import torch

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path)
        get, put = lib.omp_get_max_threads, lib.omp_set_num_threads
    except (OSError, AttributeError):
        return None, None
    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
    omp: Any = (get, put)
    before = int(get())
    put(1)
    if torch.get_num_threads() != 1:  # not the runtime torch counts with
        omp = None
    put(before)
    if omp is None:
        return None, None
    try:
        # The C interface (an int by value); the lower-case names are Fortran's (by pointer).
        mkl = lib.MKL_Set_Num_Threads_Local
    except AttributeError:
        return omp, None
    mkl.restype, mkl.argtypes = ctypes.c_int, [ctypes.c_int]
    return omp, mkl


def thread_runtimes() -> tuple[Any, Any]:
    """``((omp_get_max_threads, omp_set_num_threads), MKL_Set_Num_Threads_Local)`` as torch
    uses them, each None where it cannot be reached."""
    import torch

    torch.get_num_threads()  # torch sets a thread's count on its first use: let it, first
    with _lock:
        if "runtimes" not in _cache:
            _cache["runtimes"] = _find()
        return _cache["runtimes"]


@contextmanager
def thread_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads in this thread only (None: unchanged).

    MKL's per-thread count is set too: once ``torch.set_num_threads`` has been called, MKL no
    longer picks fewer threads for small products. At the end both counts go back to what they
    were, which also undoes a ``torch.set_num_threads`` called by this thread inside the block.
    """
    omp, mkl = thread_runtimes() if n is not None else (None, None)
    if omp is None or n is None:
        yield
        return
    get, put = omp
    before = int(get())
    put(int(n))
    mkl_before = None if mkl is None else int(mkl(int(n)))
    try:
        yield
    finally:
        put(before)
        if mkl is not None and mkl_before is not None:
            mkl(mkl_before)  # 0: back to MKL's process-wide count
