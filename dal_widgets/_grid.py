"""The cells of a simulation grid, where they run, and the file that makes a grid resumable.

A grid is one cell per (strategy, seed) over one dataset. :func:`run_grid` runs the cells
serially in this process (the default), in local processes (``"processes"``, spawn start
method), on Ray (``"ray"``), or on any :class:`concurrent.futures.Executor`, and streams each
finished cell back to the caller. A cell is a plain function of picklable arguments
(:func:`run_cell`), so a cell gives the same curve wherever it runs. With a results file,
each finished cell is appended as one JSON line keyed by a hash of its configuration
(:func:`cell_key`), and a rerun skips the cells the file already has.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import platform
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, param_error
from dal_widgets._grid_backends import EXECUTORS

__all__ = ["Cell", "GridFile", "cell_key", "describe", "error_line", "run_cell", "run_grid"]


@dataclasses.dataclass
class Cell:
    """One (strategy, seed) run and its key. The initial labels and the oracle's answers are
    drawn in the driver by ``oracle(seed)`` when the cell is sent, not all up front."""

    strategy: str
    seed: int
    oracle: Callable[[int], tuple[np.ndarray, np.ndarray]]
    key: str = ""

    def task(self) -> dict[str, Any]:
        start, answers = self.oracle(self.seed)
        return {"strategy": self.strategy, "seed": self.seed, "start": start, "answers": answers}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def describe(value: Any, _depth: int = 0) -> Any:
    """A JSON-able description of a setting that identifies it across runs and processes:
    names as they are, an encoder by its id, a dataclass by its fields, a module by its class
    and a hash of its weights, a class by the code of its methods, a function by its code,
    defaults and closure, a ``functools.partial`` by its function and arguments, an array by
    a hash of its bytes, anything else by a hash of its pickle."""
    from dal_widgets.encoders._base import Encoder, code_digest, weights_digest

    if _depth > 8:
        return "..."
    again = functools.partial(describe, _depth=_depth + 1)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Encoder):
        return {"encoder": value.id}
    if isinstance(value, np.ndarray):
        data = (
            "\x00".join(map(str, value.ravel().tolist())).encode()
            if value.dtype == object  # the bytes of an object array are pointers
            else np.ascontiguousarray(value).tobytes()
        )
        return {"array": _digest(data), "dtype": str(value.dtype), "shape": list(value.shape)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: again(getattr(value, f.name)) for f in dataclasses.fields(value)} | {
            "class": type(value).__qualname__
        }
    if isinstance(value, (list, tuple)):
        return [again(v) for v in value]
    if isinstance(value, dict):
        return {str(k): again(v) for k, v in value.items()}
    if isinstance(value, functools.partial):
        return {
            "partial": again(value.func),
            "args": again(value.args),
            "kw": again(value.keywords),
        }
    if isinstance(value, type):
        methods = sorted(
            (name, code_digest(f)[:16])
            for klass in value.__mro__
            if klass.__module__ not in ("builtins", "torch.nn.modules.module")
            for name, f in vars(klass).items()
            if isinstance(f, types.FunctionType)
        )
        return {"class": f"{value.__module__}.{value.__qualname__}", "methods": methods}
    if isinstance(value, types.FunctionType):
        cells = [c.cell_contents for c in value.__closure__ or () if _filled(c)]
        return {
            "function": code_digest(value)[:16],
            "defaults": again(value.__defaults__),
            "kwdefaults": again(value.__kwdefaults__),
            "closure": again(cells),
        }
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if hasattr(value, "state_dict"):
        return {"module": kind, "weights": weights_digest(value)[:16]}
    try:
        return {"object": kind, "pickle": _digest(pickle.dumps(value))}
    except Exception:  # noqa: BLE001 (unpicklable: its code at least)
        return {"object": kind, "code": code_digest(value)[:16]}


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def cell_key(config: dict[str, Any]) -> str:
    """The hash of a cell's configuration (see :func:`describe`): the key in a results file."""
    from dal_widgets import __version__

    text = json.dumps({**config, "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# One cell


def run_cell(
    shared: dict[str, Any], task: dict[str, Any], stop: Any = None, *, catch: bool = True
) -> dict[str, Any]:
    """Run one cell: a fresh session on the shared dataset and settings, labels from the
    oracle, round after round to the budget. Returns its records, and the traceback when it
    raised (with ``catch``; without, the exception goes to the caller)."""
    from dal_widgets.session import Session
    from dal_widgets.simulation import SimulationResult, _run_one

    result = SimulationResult()
    t0 = time.perf_counter()
    error = None
    try:
        session = Session(
            shared["dataset"],
            retrain="manual",
            strategy=task["strategy"],
            model=shared["model"],
            store=":memory:",
            seed=task["seed"],
            device=shared["device"],
            train_config=shared["train_config"],
            encoder=shared["encoder"],
        )
        try:
            _run_one(
                session,
                task["start"],
                task["answers"],
                shared["batch"],
                shared["budget"],
                result,
                shared.get("progress"),
                stop,
            )
        finally:
            session.close()
    except Exception:  # a cell's failure is its result; serial runs re-raise
        if not catch:
            raise
        error = traceback.format_exc()
    stopped = stop is not None and stop.is_set()
    last = result.records[-1]["labels"] if result.records else 0
    return {
        "records": result.records,
        "error": error,
        "complete": error is None and (not stopped or last >= shared["budget"]),
        "where": f"{platform.node()}:{os.getpid()}",
        "seconds": time.perf_counter() - t0,
    }


def error_line(text: str | None) -> str:
    """The last line of a traceback (the exception and its message), for one-line displays."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "?"


# ---------------------------------------------------------------------------------------------
# The results file


class GridFile:
    """A JSON-lines file of finished cells, appended one whole line per cell (flushed and
    synced), held with an exclusive lock while a grid runs. A line cut short by a killed
    driver is dropped when the file is opened again."""

    def __init__(self, path: Any, where: str) -> None:
        try:
            self.path = Path(os.fspath(path)).expanduser()
        except TypeError:
            raise param_error(
                "results", where, "a path to a .jsonl file (str or Path)", path, TypeError
            ) from None
        if self.path.is_dir():
            raise param_error("results", where, "a path to a file, not a folder", str(path))
        self.where = where
        self._fh: Any = None

    def open(self) -> dict[str, dict[str, Any]]:
        """Lock the file and read it: the finished cells by key (the last entry of a key wins)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise RuntimeError(
                f"The results file {str(self.path)!r} is in use by another running grid "
                f"({self.where}); wait for it to end or pick another file."
            ) from None
        self._fh = fh
        fh.seek(0)
        data = fh.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a line cut short by a kill: drop it
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        cells: dict[str, dict[str, Any]] = {}
        bad = 0
        for line in data[:cut].splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                cells[str(entry["key"])] = entry
            except (ValueError, KeyError, TypeError):
                bad += 1
        if bad:
            warnings.warn(
                f"{self.where}: {bad} unreadable line(s) in {str(self.path)!r} were skipped; "
                "their cells run again.",
                RuntimeWarning,
                stacklevel=4,
            )
        return cells

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=_json_default) + "\n"
        self._fh.write(line.encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def check_executor(executor: Any, max_workers: Any, where: str) -> int | None:
    """Refuse an unknown executor or a bad worker count, naming what is accepted."""
    if executor is not None and not isinstance(executor, Executor) and executor not in EXECUTORS:
        raise param_error(
            "executor",
            where,
            "None (serial), 'processes', 'ray' or a concurrent.futures.Executor",
            executor,
        )
    if max_workers is None:
        return None
    return check_int(max_workers, "max_workers", where, lo=1)


# ---------------------------------------------------------------------------------------------
# The driver


class GridRun:
    """The state of a grid as it runs: counts of cells, failures, and the callbacks."""

    def __init__(
        self,
        result: Any,
        total: int,
        progress: Callable[[dict[str, Any]], None] | None,
        on_cell: Callable[[dict[str, Any]], None] | None,
        file: GridFile | None,
        configs: dict[str, dict[str, Any]],
    ) -> None:
        self.result, self.total = result, total
        self.progress, self.on_cell = progress, on_cell
        self.file, self.configs = file, configs
        self.done = self.failed = self.running = self.resumed = 0

    def event(self, cell: Cell, state: str, **extra: Any) -> None:
        if self.on_cell is None:
            return
        self.on_cell(
            {
                "strategy": cell.strategy,
                "seed": cell.seed,
                "state": state,
                "done": self.done,
                "running": self.running,
                "failed": self.failed,
                "resumed": self.resumed,
                "total": self.total,
                **extra,
            }
        )

    def resume(self, cell: Cell, entry: dict[str, Any]) -> None:
        """A cell the results file has: its records streamed, nothing run or written."""
        self.resumed += 1
        self.stream(entry["records"])
        self.event(cell, "resumed", where=entry.get("where"))

    def stream(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.result.records.append(record)
            if self.progress is not None:
                self.progress(dict(record))

    def finished(self, cell: Cell, out: dict[str, Any], *, stream: bool) -> None:
        """Take a finished cell's output: its records (streamed unless they were already),
        its failure, its line in the results file."""
        if out.get("error"):  # its rounds stay out of the curves: kept with the failure
            self.failed += 1
            self.result.failures.append(
                {
                    "strategy": cell.strategy,
                    "seed": cell.seed,
                    "error": out["error"],
                    "records": out["records"],
                }
            )
            self.event(cell, "failed", error=out["error"])
            return
        if stream:
            self.stream(out["records"])
        if not out.get("complete", True):
            self.event(cell, "stopped")
            return
        self.done += 1
        if self.file is not None:
            self.file.append(
                {
                    "key": cell.key,
                    "strategy": cell.strategy,
                    "seed": cell.seed,
                    "config": self.configs[cell.key],
                    "records": out["records"],
                    "where": out.get("where"),
                    "seconds": out.get("seconds"),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            )
        self.event(cell, "done", where=out.get("where"))


def run_grid(
    cells: list[Cell],
    shared: dict[str, Any],
    configs: dict[str, dict[str, Any]],
    result: Any,
    *,
    executor: Any,
    max_workers: int | None,
    results: Any,
    progress: Callable[[dict[str, Any]], None] | None,
    on_cell: Callable[[dict[str, Any]], None] | None,
    stop: threading.Event | None,
    where: str,
) -> Any:
    """Run ``cells`` on ``executor`` into ``result`` (see :func:`dal_widgets.simulate`)."""
    file = None if results is None else GridFile(results, where)
    earlier = {} if file is None else file.open()
    run = GridRun(result, len(cells), progress, on_cell, file, configs)
    try:
        todo = []
        for cell in cells:
            entry = earlier.get(cell.key)
            if entry is None:
                todo.append(cell)
                continue
            run.resume(cell, entry)
        if executor is None:
            _serial(todo, shared, run, stop)
        else:
            _parallel(todo, shared, run, executor, max_workers, stop, where)
    finally:
        if file is not None:
            file.close()
    if result.failures and on_cell is None:  # a caller watching the cells has seen them
        warnings.warn(
            f"{where}: {len(result.failures)} of {len(cells)} cells failed; their tracebacks "
            "are in result.failures.",
            RuntimeWarning,
            stacklevel=3,
        )
    return result


def _serial(
    todo: list[Cell], shared: dict[str, Any], run: GridRun, stop: threading.Event | None
) -> None:
    """In this process, one after another, each round's record streamed as it comes; an
    exception ends the grid (as it always has: the default stays unchanged)."""

    def stream(record: dict[str, Any]) -> None:
        run.stream([record])

    for cell in todo:
        if stop is not None and stop.is_set():
            return
        run.running = 1
        run.event(cell, "running")
        out = run_cell({**shared, "progress": stream}, cell.task(), stop, catch=False)
        run.running = 0
        run.finished(cell, out, stream=False)


def _parallel(
    todo: list[Cell],
    shared: dict[str, Any],
    run: GridRun,
    executor: Any,
    max_workers: int | None,
    stop: threading.Event | None,
    where: str,
) -> None:
    """On a backend: at most ``slots`` cells in flight, each streamed back as it finishes;
    on ``stop``, no new cells, and the running ones end as the backend can end them."""
    from dal_widgets._grid_backends import make_backend

    if not todo:
        return
    if shared.get("encoder") is not None:
        _embed_first(shared, where)
    backend = make_backend(executor, max_workers, shared, where, len(todo))
    queue = list(todo)
    flying: dict[Any, Cell] = {}
    stopping = False
    try:
        while queue or flying:
            if stop is not None and stop.is_set() and not stopping:
                stopping = True
                queue.clear()
                keep = backend.stop(list(flying))
                for handle in [h for h in flying if h not in keep]:
                    run.running -= 1
                    run.event(flying.pop(handle), "stopped")
            while queue and len(flying) < backend.slots:
                cell = queue.pop(0)
                flying[backend.submit(cell.task())] = cell
                run.running = len(flying)
                run.event(cell, "running")
            for handle in backend.wait(list(flying), timeout=0.25):
                cell = flying.pop(handle)
                out = backend.result(handle)
                run.running = len(flying)
                run.finished(cell, out, stream=True)
    finally:
        backend.close()


def _embed_first(shared: dict[str, Any], where: str) -> None:
    """Embed the pool into the encoder's cache in the driver, once, before the cells start
    (else every worker would embed it at the same time); the cells then read the cache."""
    from dal_widgets.session import Session

    session = Session(
        shared["dataset"],
        encoder=shared["encoder"],
        store=":memory:",
        device=shared["device"],
        retrain="manual",
    )
    try:
        session.inputs.wait()
        job = session.inputs.job
        if job is not None and job.error is not None:
            raise RuntimeError(
                f"{where}: embedding the pool failed before the grid started:\n{job.error}"
            )
    finally:
        session.close()
