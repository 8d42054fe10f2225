"""The benchmarks' shared harness: timing, memory, machine description and the results file.

Every benchmark script builds one :class:`Report` and calls :meth:`Report.save`, which prints
its tables to stdout and writes ``benchmarks/results/<name>.json`` next to the script's PNG
figures; ``benchmarks/run_all.py`` runs the scripts and renders every JSON into
``BENCHMARKS.md``. Only the standard library is needed here; matplotlib (Agg backend) is
imported when a figure is drawn, numpy/torch only when present.

Measuring::

    m = measure(fn, warmup=1, repeat=5)         # -> Measurement
    m.median, m.p95, m.min, m.max, m.times      # seconds
    m.peak_bytes, m.memory_method               # peak memory of one call (see below)
    base, ours = compare(reference, fn)         # alternating calls, same run
    ratio(base, ours)                           # base median / ours median: > 1 = ours faster
    Measurement.from_times([...])               # times measured by the script itself

Peak memory is the largest rise during one timed call of: the resident set size's high-water
mark (Linux: ``VmHWM``, reset before each call through ``/proc/self/clear_refs``;
``memory_method`` "rss"), or, where that cannot be reset, the tracemalloc peak (Python and
numpy allocations only; "tracemalloc"); on CUDA ``torch.cuda.max_memory_allocated`` above
what was allocated before the call ("cuda"). ``measure(..., heap=True)`` adds one untimed
call under tracemalloc (``heap_peak_bytes``). Freed memory only leaves the resident set when
the allocator returns it: run with ``MALLOC_MMAP_THRESHOLD_=131072`` for exact RSS peaks.

Results file (``benchmarks/results/<name>.json``, schema 1)::

    {
      "schema": 1,
      "name": str,                 # file stem: strategies, training, ..., label_efficiency
      "title": str,
      "command": str,              # the exact command line, from the repository root
      "quick": bool,               # a --quick smoke run: figures indicative only
      "started": str,              # ISO 8601, UTC
      "seconds": float,            # wall time of the script
      "machine": {...},            # machine(), below
      "notes": [str],
      "tables": [{"caption": str, "columns": [str], "rows": [[str | number | null]]}],
      "figures": [{"path": str, "caption": str}],  # path relative to benchmarks/results
      "targets": [{"name": str, "value": number | str | null, "target": str,
                   "met": bool | null}],           # null: not judged (e.g. a quick run)
      "data": {...}                # optional raw measurements, free-form
    }

``machine()`` holds: cpu (model, from /proc/cpuinfo), cores, cores_usable (this process's CPU
affinity), ram_gb, platform, python, numpy, torch, torch_threads, cuda, gpu, date (ISO 8601,
UTC), commit (git HEAD) and dirty (uncommitted changes to tracked files, leaving out the
benchmarks' own outputs: ``benchmarks/results/`` and ``BENCHMARKS.md``).

Other scripts (e.g. ``label_efficiency.py``) produce the same file with::

    report = Report("label_efficiency", "Label efficiency on MNIST", quick=args.quick)
    report.table(caption, columns, rows); report.target(name, value, goal, met)
    fig, ax = report.subplots(); ...; report.figure(fig, "curves", caption)
    report.note(text); report.data["records"] = [...]; report.save()
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "MB",
    "RESULTS",
    "Call",
    "Measurement",
    "Report",
    "call_once",
    "compare",
    "format_table",
    "machine",
    "measure",
    "ratio",
]

SCHEMA = 1
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# One call: seconds, peak memory, other processes' CPU load


def _status_kb(name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_ticks() -> tuple[int, int, int] | None:
    """(busy ticks of the machine, all ticks, this process's ticks) from /proc, or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        with open("/proc/self/stat") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields), int(own[11]) + int(own[12])


def others_share(before: Any, after: Any) -> float | None:
    """Share of the machine's CPU time other processes used between two :func:`cpu_ticks`."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    others = (after[0] - before[0]) - (after[2] - before[2])
    return max(0.0, others / (after[1] - before[1]))


def shares_text(shares: dict[str, float | None]) -> str:
    """``"embedding 1%, head fits 0%, lazy pool unknown"``: :func:`others_share` per part."""
    return ", ".join(f"{k} {v:.0%}" if v is not None else f"{k} unknown" for k, v in shares.items())


def wait_quiet(seconds: float) -> None:
    """Wait up to ``seconds`` for other processes to use less than 10% of the CPU."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = cpu_ticks()
        time.sleep(0.5)
        share = others_share(before, cpu_ticks())
        if share is None or share < 0.1:
            return


@dataclass
class Call:
    """One timed call: seconds, peak extra bytes (None: not measured), load, return value."""

    seconds: float
    peak_bytes: int | None
    memory_method: str | None
    load: float | None
    result: Any = None


def _is_cuda(device: Any) -> bool:
    return device is not None and str(getattr(device, "type", device)).startswith("cuda")


def call_once(
    fn: Callable[[], Any],
    *,
    device: Any = None,
    memory: bool = True,
    quiet: float = 0.0,
) -> Call:
    """Time one call of ``fn`` and measure its peak memory (see the module docstring).

    ``device``: a CUDA device (or "cuda") synchronizes around the call and measures the CUDA
    peak instead of the host's. ``quiet``: first wait up to that many seconds for a quiet CPU.
    """
    gc.collect()
    if quiet:
        wait_quiet(quiet)
    cuda = _is_cuda(device)
    method, before = None, None
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before, method = torch.cuda.memory_allocated(), "cuda"
    elif memory:
        before = _status_kb("VmRSS") if _reset_rss_peak() else None
        if before is not None:
            method = "rss"
        else:
            tracemalloc.start()
            method = "tracemalloc"
    ticks = cpu_ticks()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    load = others_share(ticks, cpu_ticks())
    peak: int | None = None
    if method == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    elif method == "rss":
        hwm = _status_kb("VmHWM")
        peak = None if hwm is None else max(0, hwm - before) * 1024
    elif method == "tracemalloc":
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Call(seconds, peak, method, load, result)


# ---------------------------------------------------------------------------------------------
# Repeated calls


def _quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile as ``statistics.quantiles`` (exclusive) gives it, within [min, max]."""
    data = sorted(values)
    if len(data) < 2:
        return data[0]
    cuts = statistics.quantiles(data, n=100)
    return min(data[-1], max(data[0], cuts[min(98, max(0, round(q * 100) - 1))]))


@dataclass
class Measurement:
    """Seconds of repeated calls, with their peak memory and the CPU load of other processes."""

    times: list[float]
    peak_bytes: int | None = None
    memory_method: str | None = None
    heap_peak_bytes: int | None = None
    load: float | None = None
    result: Any = field(default=None, repr=False)

    @classmethod
    def from_times(cls, times: Sequence[float], **kwargs: Any) -> Measurement:
        """A measurement of times the script took itself (e.g. a worker's own clock)."""
        if not times:
            raise ValueError("no times")
        return cls([float(t) for t in times], **kwargs)

    @classmethod
    def from_calls(cls, calls: Sequence[Call]) -> Measurement:
        peaks = [c.peak_bytes for c in calls if c.peak_bytes is not None]
        loads = [c.load for c in calls if c.load is not None]
        return cls(
            [c.seconds for c in calls],
            peak_bytes=max(peaks) if peaks else None,
            memory_method=calls[-1].memory_method,
            load=max(loads) if loads else None,
            result=calls[-1].result,
        )

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        return _quantile(self.times, 0.95)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the return value)."""
        return {
            "n": self.n,
            "median": self.median,
            "p95": self.p95,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "times": self.times,
            "peak_bytes": self.peak_bytes,
            "memory_method": self.memory_method,
            "heap_peak_bytes": self.heap_peak_bytes,
            "load": self.load,
        }


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    device: Any = None,
    memory: bool = True,
    heap: bool = False,
    quiet: float = 0.0,
) -> Measurement:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed.

    ``device``: CUDA synchronizes and measures the CUDA peak. ``heap``: one more call, untimed,
    under tracemalloc. ``quiet``: before each timed call, wait up to that many seconds for the
    other processes to go quiet. ``result`` holds the last call's return value.
    """
    for _ in range(warmup):
        fn()
    m = Measurement.from_calls(
        [call_once(fn, device=device, memory=memory, quiet=quiet) for _ in range(repeat)]
    )
    if heap:
        gc.collect()
        tracemalloc.start()
        try:
            fn()
            m.heap_peak_bytes = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return m


def compare(
    baseline: Callable[[], Any],
    candidate: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    baseline_repeat: int | None = None,
    device: Any = None,
    baseline_device: Any = None,
    memory: bool = True,
    quiet: float = 0.0,
) -> tuple[Measurement | None, Measurement]:
    """Measure ``baseline`` and ``candidate`` in alternation (candidate first in each round).

    Alternating makes a neighbour's load on a shared machine fall on both alike. A slow
    baseline can run fewer times (``baseline_repeat``, 0 = not at all: returns None for it).
    """
    b_repeat = repeat if baseline_repeat is None else baseline_repeat
    for _ in range(warmup):
        candidate()
        if b_repeat:
            baseline()
    ours: list[Call] = []
    base: list[Call] = []
    for i in range(max(repeat, b_repeat)):
        if i < repeat:
            ours.append(call_once(candidate, device=device, memory=memory, quiet=quiet))
        if i < b_repeat:
            base.append(call_once(baseline, device=baseline_device, memory=memory, quiet=quiet))
    return (Measurement.from_calls(base) if base else None), Measurement.from_calls(ours)


def ratio(baseline: Measurement | float, candidate: Measurement | float) -> float:
    """How many times faster the candidate is: baseline median / candidate median."""
    b = baseline.median if isinstance(baseline, Measurement) else float(baseline)
    c = candidate.median if isinstance(candidate, Measurement) else float(candidate)
    return b / c if c > 0 else math.inf


# ---------------------------------------------------------------------------------------------
# The machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine() -> dict[str, Any]:
    """What ran the benchmark: hardware, software versions, date and git commit."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": _ram_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": None,
        "torch": None,
        "torch_threads": None,
        "cuda": False,
        "gpu": None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None,
    }
    # The benchmarks' own outputs do not count: a suite run rewrites them as it goes.
    status = _git(
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)benchmarks/results",
        ":(exclude)BENCHMARKS.md",
    )
    info["dirty"] = None if status is None else bool(status)
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info.update(cuda=True, gpu=torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line: CPU, cores, RAM, GPU, versions."""
    gpu = f"GPU {info['gpu']}" if info.get("cuda") else "no CUDA"
    torch = f"torch {info['torch']} ({info['torch_threads']} threads)" if info.get("torch") else ""
    parts = [
        f"{info.get('cpu')}",
        f"{info.get('cores')} CPU cores",
        f"{info.get('ram_gb')} GB RAM",
        gpu,
        f"Python {info.get('python')}",
        torch,
        f"numpy {info['numpy']}" if info.get("numpy") else "",
    ]
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# The report


def format_cell(value: Any) -> str:
    """A table cell as text: floats with 3 significant digits (or thousands separators)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to width, a dashed rule under the header."""
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *cells, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*columns).rstrip(), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row).rstrip() for row in cells]
    return "\n".join(lines)


def default_command() -> str:
    """This process's command line, as one would type it at the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(REPO))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


class Report:
    """One benchmark's results: tables, figures, targets and notes, saved as one JSON file.

    >>> report = Report("widgets", "Label action latency", quick=args.quick)
    >>> report.table("one label action", ["median ms", "p95 ms"], [[4.2, 7.9]])
    >>> report.target("median label action", 4.2, "< 10 ms", 4.2 < 10)
    >>> fig, ax = report.subplots()            # matplotlib, Agg backend
    >>> report.figure(fig, "latency", "Histogram of the label action's latency")
    >>> report.save()                          # prints, writes results/widgets.json
    """

    def __init__(
        self,
        name: str,
        title: str,
        *,
        command: str | None = None,
        quick: bool = False,
        results: Path | str | None = None,
    ) -> None:
        self.name = name
        self.title = title
        self.command = command or default_command()
        self.quick = bool(quick)
        self.results = Path(results) if results is not None else RESULTS
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._t0 = time.perf_counter()
        #: Wall seconds to report instead of the time since creation (a report rebuilt later).
        self.seconds: float | None = None
        self.notes: list[str] = []
        self.tables: list[dict[str, Any]] = []
        self.figures: list[dict[str, str]] = []
        self.targets: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {}

    # -- content

    def note(self, text: str) -> Report:
        self.notes.append(str(text))
        return self

    def table(self, caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        columns = [str(c) for c in columns]
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"row {row!r} has {len(row)} cells for {len(columns)} columns")
        self.tables.append(
            {
                "caption": caption,
                "columns": columns,
                "rows": [[_jsonable(v) for v in r] for r in rows],
            }
        )
        return self

    def target(self, name: str, value: Any, target: str, met: bool | None) -> Report:
        """A goal and whether this run met it (None: not judged, e.g. at quick sizes)."""
        self.targets.append(
            {"name": name, "value": _jsonable(value), "target": target, "met": _jsonable(met)}
        )
        return self

    def subplots(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """``matplotlib.pyplot.subplots`` with the Agg backend (no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kwargs.setdefault("layout", "constrained")
        return plt.subplots(*args, **kwargs)

    def figure(self, fig: Any, slug: str, caption: str) -> Path:
        """Save a matplotlib figure as ``results/<name>-<slug>.png``; close it; return the path."""
        import matplotlib.pyplot as plt

        self.results.mkdir(parents=True, exist_ok=True)
        filename = f"{self.name}-{_slug(slug)}.png"
        path = self.results / filename
        if self.quick:
            title = fig.get_suptitle()  # matplotlib >= 3.8
            title = "QUICK RUN (smoke test, indicative only)" + (f"\n{title}" if title else "")
            fig.suptitle(title, color="red", fontsize=9)
        fig.savefig(path, dpi=100, metadata={"Software": None})
        plt.close(fig)
        return self.add_file(path, caption)

    def add_file(self, path: Path | str, caption: str) -> Path:
        """Record an image already written under the results folder (e.g. a screenshot)."""
        path = Path(path)
        rel = path.resolve().relative_to(self.results.resolve()).as_posix()
        self.figures = [f for f in self.figures if f["path"] != rel]
        self.figures.append({"path": rel, "caption": caption})
        return path

    # -- output

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "quick": self.quick,
            "started": self.started,
            "seconds": round(
                time.perf_counter() - self._t0 if self.seconds is None else self.seconds, 1
            ),
            "machine": machine(),
            "notes": self.notes,
            "tables": self.tables,
            "figures": self.figures,
            "targets": self.targets,
            "data": _jsonable(self.data),
        }

    def text(self, doc: dict[str, Any] | None = None) -> str:
        """The report as plain text: machine, tables, targets and notes."""
        doc = doc or self.to_dict()
        out = [
            f"== {doc['title']}"
            + ("  [QUICK RUN: figures indicative only]" if doc["quick"] else "")
        ]
        out.append(machine_line(doc["machine"]))
        for t in doc["tables"]:
            out += ["", t["caption"] + ":", format_table(t["columns"], t["rows"])]
        if doc["targets"]:
            rows = [[t["name"], t["value"], t["target"], _met(t["met"])] for t in doc["targets"]]
            out += ["", "targets:", format_table(["target", "value", "goal", "met"], rows)]
        if doc["notes"]:
            out += [""] + [f"- {n}" for n in doc["notes"]]
        if doc["figures"]:
            out += [""] + [f"figure: {self.results / f['path']}" for f in doc["figures"]]
        return "\n".join(out)

    def save(self) -> Path:
        """Print the report and write ``results/<name>.json``; remove figures it no longer has."""
        doc = self.to_dict()
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.results / f"{self.name}.json"
        kept = {f["path"] for f in doc["figures"]}
        try:
            old = json.loads(path.read_text())
            for f in old.get("figures", []):
                stale = self.results / f["path"]
                if f["path"] not in kept and stale.parent == self.results and stale.exists():
                    stale.unlink()
        except (OSError, ValueError, TypeError, KeyError):
            pass
        path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        print("\n" + self.text(doc), flush=True)
        print(f"\nwrote {path}", flush=True)
        return path


def _met(met: bool | None) -> str:
    return "not judged" if met is None else ("met" if met else "NOT met")


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples to plain JSON; NaN and infinity to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, Measurement):
        return value.to_dict()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
