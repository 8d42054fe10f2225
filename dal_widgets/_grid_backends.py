"""Where a grid's cells run: local processes, Ray, or a caller's executor.

Each backend submits a cell (a picklable task for :func:`dal_widgets._grid.run_cell`), waits
for finished ones, turns every way a cell can fail into a failure record (never an exception
into the driver), and knows how to stop: running cells end after their current round where
the backend can tell them (processes, threads), and are cancelled where it cannot (Ray).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import sys
import threading
import traceback
import types
from concurrent.futures import FIRST_COMPLETED, Executor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["EXECUTORS", "make_backend"]

EXECUTORS = ("processes", "ray")


def _failure(text: str) -> dict[str, Any]:
    return {"records": [], "error": text, "complete": False}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# What runs in a worker

_WORKER: dict[str, Any] = {}


def _init_process(shared_bytes: bytes, stop: Any, threads: int) -> None:
    """A process worker's start: its torch threads, then the grid's shared settings (once)."""
    import torch

    torch.set_num_threads(threads)
    _WORKER["shared"] = pickle.loads(shared_bytes)
    _WORKER["stop"] = stop


def _process_cell(task: dict[str, Any]) -> dict[str, Any]:
    from dal_widgets._grid import run_cell

    return run_cell(_WORKER["shared"], task, _WORKER["stop"])


def _executor_cell(
    shared: dict[str, Any], task: dict[str, Any], stop: threading.Event | None = None
) -> dict[str, Any]:
    from dal_widgets._grid import run_cell

    return run_cell(shared, task, stop)


def _ray_cell(shared: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    import torch

    from dal_widgets._grid import run_cell

    torch.set_num_threads(1)  # a task holds one CPU
    return run_cell(shared, task)


# ---------------------------------------------------------------------------------------------
# Backends


class _ExecutorBackend:
    """A caller's executor; threads of this process are told to stop after their round."""

    def __init__(self, executor: Executor, shared: dict[str, Any], slots: int) -> None:
        self.executor, self.shared, self.slots = executor, shared, slots
        threads = isinstance(executor, ThreadPoolExecutor)
        self.event: Any = threading.Event() if threads else None

    def submit(self, task: dict[str, Any]) -> Any:
        return self.executor.submit(_executor_cell, self.shared, task, self.event)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        return list(wait_futures(handles, timeout=timeout, return_when=FIRST_COMPLETED)[0])

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return handle.result()
        except BrokenProcessPool:
            return _failure(
                "A worker process died while this cell ran (killed, or out of memory?); "
                "the other cells it shared the pool with failed with it.\n" + traceback.format_exc()
            )
        except BaseException:  # noqa: BLE001 (a cancel, the executor's failure: the cell's)
            return _failure(traceback.format_exc())

    def stop(self, handles: list[Any]) -> list[Any]:
        if self.event is not None:
            self.event.set()  # running cells end after their current round and come back
        return [h for h in handles if not h.cancel()]

    def close(self) -> None:
        if self.event is not None:
            self.event.set()


class _ProcessBackend(_ExecutorBackend):
    """Our own pool of spawned processes (no thread state of this process is forked). A
    worker that dies (killed, out of memory) breaks the pool: the cells it held are failed,
    and the pool is started again for the rest."""

    def __init__(self, blob: bytes, workers: int) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.threads = max(1, _cpus() // workers)  # the workers share the cores
        self.blob = blob
        self.slots = workers
        self.event = self.ctx.Event()  # the workers' view of stop: end after the round
        self.executor = self._new_pool()

    def _new_pool(self) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=self.ctx,
            initializer=_init_process,
            initargs=(self.blob, self.event, self.threads),
        )

    def submit(self, task: dict[str, Any]) -> Any:
        try:
            return self.executor.submit(_process_cell, task)
        except BrokenProcessPool:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._new_pool()
            return self.executor.submit(_process_cell, task)

    def close(self) -> None:
        super().close()  # on an exception or Ctrl-C too: no cell runs on to its budget
        self.executor.shutdown(wait=True, cancel_futures=True)


class _RayBackend:
    """Ray tasks of one CPU each (one GPU each when the cells train on CUDA); the shared
    settings go to the object store once."""

    def __init__(self, ray: Any, shared: dict[str, Any], slots: int | None) -> None:
        self.ray = ray
        self.ref = ray.put(shared)
        resources = ray.cluster_resources()
        device = str(shared.get("device"))
        gpus = int(resources.get("GPU", 0))
        want_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
        cpus = max(1, int(resources.get("CPU", 1)))
        self.slots = slots or (max(1, min(cpus, gpus)) if want_gpu else cpus)
        options = {"num_cpus": 1, "max_retries": 0}
        if want_gpu:
            options["num_gpus"] = 1
        self.remote = ray.remote(**options)(_ray_cell)

    def submit(self, task: dict[str, Any]) -> Any:
        return self.remote.remote(self.ref, task)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        return list(self.ray.wait(handles, num_returns=1, timeout=timeout)[0])

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return self.ray.get(handle)
        except Exception:  # noqa: BLE001 (the worker died, or the task could not start)
            return _failure(traceback.format_exc())

    def stop(self, handles: list[Any]) -> list[Any]:
        """Keep the cells that already finished; cancel the others (Ray cannot tell a running
        task to end after its round)."""
        done = list(self.ray.wait(handles, num_returns=len(handles), timeout=0)[0])
        for h in handles:
            if h not in done:
                self.ray.cancel(h, force=True)
        return done

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Choosing and making one


def _import_ray(where: str) -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"{where}(executor='ray') needs Ray: pip install 'dal-widgets[ray]' "
            "(or pip install ray)."
        ) from None
    return ray


def make_backend(
    executor: Any, max_workers: int | None, shared: dict[str, Any], where: str, n_cells: int
) -> Any:
    """The backend for ``executor`` (checked by :func:`dal_widgets._grid.check_executor`)."""
    if isinstance(executor, Executor):
        slots = max_workers or getattr(executor, "_max_workers", None) or _cpus()
        return _ExecutorBackend(executor, shared, slots)
    if executor == "ray":
        ray = _import_ray(where)
        if not ray.is_initialized():
            # Connects to RAY_ADDRESS when it is set, else starts a local Ray.
            ray.init(ignore_reinit_error=True, logging_level="warning")
        return _RayBackend(ray, shared, max_workers)
    blob = _pickle_for_workers(shared, where)
    return _ProcessBackend(blob, min(max_workers or _cpus(), n_cells))


class _MainFinder(pickle.Pickler):
    """A pickler that notes the classes and functions it meets that live in ``__main__``."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.found: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        named = isinstance(obj, (type, types.FunctionType))
        owner = obj if named else type(obj)
        if getattr(owner, "__module__", None) == "__main__":
            self.found.append(getattr(owner, "__qualname__", repr(owner)))
        return NotImplemented


_SENT = ("dataset", "model", "train_config", "encoder")


def _pickle_for_workers(shared: dict[str, Any], where: str) -> bytes:
    """The grid's shared settings as bytes for spawned workers, pickled once, or a TypeError
    that names the setting they could not get: an object pickle refuses, or code defined in a
    notebook (its ``__main__`` has no file, so a spawned process cannot import what it
    defines)."""
    buf = io.BytesIO()
    finder = _MainFinder(buf)
    interactive = not hasattr(sys.modules.get("__main__"), "__file__")
    try:
        finder.dump(shared)
        if not (finder.found and interactive):
            return buf.getvalue()
    except Exception:  # noqa: BLE001 (named below, setting by setting)
        pass
    how = (
        "Define models and functions in a module the workers can import (a .py file beside "
        "the notebook), or use executor='ray', which sends code by value."
    )
    for name in _SENT:  # only on failure: one at a time, to name the one that fails
        finder = _MainFinder(io.BytesIO())
        try:
            finder.dump(shared.get(name))
        except Exception as exc:
            raise TypeError(
                f"{where}(executor='processes') sends {name!r} to each worker process, and it "
                f"cannot be pickled ({type(exc).__name__}: {exc}). {how}"
            ) from exc
        if finder.found:
            names = ", ".join(sorted(set(finder.found)))
            raise TypeError(
                f"{where}(executor='processes') sends {name!r} to each worker process, and it "
                f"uses code defined in the notebook ({names}), which worker processes cannot "
                f"import. {how}"
            )
    raise TypeError(f"{where}(executor='processes') cannot send its settings to the workers.")
