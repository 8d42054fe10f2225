"""Torch's intra-op threads for the calling thread only.

``torch.set_num_threads`` also sets the default every thread starts with, so a worker that
calls it changes threads it does not own. Torch's CPU ops run their loops in OpenMP parallel
regions, and OpenMP keeps the thread count per thread: :func:`thread_threads` sets it for the
calling thread alone, through the OpenMP runtime torch loaded.

Why a fit of a tiny model wants one thread: once another thread of the process has run a
parallel region (any notebook's main thread has), OpenMP holds more threads than there are
cores and stops spinning between regions, so each region pays a sleep and a wake-up. A head
fit runs a few hundred small regions: on 2 cores, 1,000 labels at D=384 took 130 ms at two
threads against 50 ms at one (and 40 ms at two in a process that ran nothing else).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["openmp_runtime", "thread_threads"]

_NAMES = ("libgomp", "libiomp5", "libomp")
_cache: dict[str, Any] = {}
_lock = threading.Lock()


def _loaded_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux), torch's own first."""
    try:
        with open("/proc/self/maps") as fh:
            lines = fh.read().splitlines()
    except OSError:  # not Linux
        return []
    paths = []
    for line in lines:
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        name = os.path.basename(path)
        if name.startswith(_NAMES) and ".so" in name and path not in paths:
            paths.append(path)
    import torch

    own = os.path.dirname(torch.__file__)
    return sorted(paths, key=lambda p: not p.startswith(own))


def _cached(name: str, find: Any) -> Any:
    with _lock:
        if name not in _cache:
            _cache[name] = find()
        return _cache[name]


def _find_openmp() -> Any:
    for path in _loaded_runtimes():
        try:
            lib = ctypes.CDLL(path)
            lib.omp_get_max_threads.restype = ctypes.c_int
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            continue
        return lib
    return None


def _find_mkl() -> Any:
    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        # The C interface (an int by value); the lower-case names are Fortran's (by pointer).
        setter = lib.MKL_Set_Num_Threads_Local
        setter.restype = ctypes.c_int
        setter.argtypes = [ctypes.c_int]
    except (OSError, AttributeError):  # another platform, or a torch without MKL
        return None
    return setter


def openmp_runtime() -> Any:
    """The OpenMP runtime torch uses (a ctypes library), or None where none is found."""
    return _cached("openmp", _find_openmp)


def mkl_runtime() -> Any:
    """MKL's thread-local setter in the MKL that torch links, or None where it has none.

    Once ``torch.set_num_threads`` has been called, MKL no longer chooses fewer threads for
    small products (torch turns MKL's dynamic mode off), so a tiny model's every matrix
    product would wake a second thread: MKL's own per-thread count is set too.
    """
    return _cached("mkl", _find_mkl)


@contextmanager
def thread_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads in this thread only (None: unchanged; no
    change either where the OpenMP runtime cannot be reached)."""
    import torch

    torch.get_num_threads()  # torch sets a thread's count on its first use: let it, first
    omp = None if n is None else openmp_runtime()
    if omp is None or n is None:
        yield
        return
    mkl = mkl_runtime()
    before = int(omp.omp_get_max_threads())
    omp.omp_set_num_threads(int(n))
    mkl_before = None if mkl is None else int(mkl(int(n)))
    try:
        yield
    finally:
        omp.omp_set_num_threads(before)
        if mkl is not None and mkl_before is not None:
            mkl(mkl_before)  # 0: back to MKL's process-wide count
