"""Formatting for reprs: short numbers with units, local times, escaped HTML tables.

Reprs are read by people in notebook outputs, so they round (a handful of significant
digits), name units (``10.3 µs``, ``1.84 s``), show a time of day instead of a Unix time
and a dash instead of ``nan``. The values behind them stay exact; only the text is short.
Standard library only: every core module may import this.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "MISSING",
    "fmt_float",
    "fmt_fraction",
    "fmt_seconds",
    "fmt_spread",
    "fmt_time",
    "html_table",
    "is_missing",
    "quartiles",
]

#: What a missing number (None, NaN) reads as.
MISSING = "—"


def is_missing(x: Any) -> bool:
    """True for None and NaN (the two ways a number is absent here)."""
    if x is None:
        return True
    try:
        return math.isnan(x)
    except TypeError:
        return False


def fmt_float(x: Any, digits: int = 4) -> str:
    """``x`` with at most ``digits`` significant digits, never in scientific notation between
    1e-4 and 1e6 (``0.0001234``, ``12.35``, ``123457``); :data:`MISSING` for None or NaN."""
    if is_missing(x):
        return MISSING
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-4 <= abs(x) < 1e6:
        # Round to `digits` significant digits, then print without padding zeros.
        decimals = max(digits - 1 - math.floor(math.log10(abs(x))), 0)
        text = f"{round(x, decimals):.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{x:.{max(digits, 1)}g}"


def fmt_fraction(x: Any, decimals: int = 3) -> str:
    """A value in [0, 1] such as an accuracy: ``0.912``; :data:`MISSING` for None or NaN."""
    return MISSING if is_missing(x) else f"{float(x):.{decimals}f}"


def fmt_seconds(s: Any) -> str:
    """A duration with a unit and 3 significant digits: ``10.3 µs``, ``2.1 ms``, ``1.84 s``,
    ``2 min 05 s``, ``1 h 02 min``; :data:`MISSING` for None or NaN."""
    if is_missing(s):
        return MISSING
    s = float(s)
    if s < 0:
        return "-" + fmt_seconds(-s)
    if s == 0:
        return "0 s"
    for factor, unit in ((1e-9, "ns"), (1e-6, "µs"), (1e-3, "ms")):
        text = fmt_float(s / factor, 3)
        if float(text) < 1000:  # after rounding: 999.96 µs reads 1 ms, not 1000 µs
            return f"{text} {unit}"
    text = fmt_float(s, 3)
    if float(text) < 60:
        return f"{text} s"
    whole = round(s)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def fmt_time(ts: Any, now: float | None = None) -> str:
    """A Unix time as local time of day (``14:02:11``), with the date when it is not today
    (``2026-05-09 14:02:11``); :data:`MISSING` for None, NaN or 0 (never set)."""
    if is_missing(ts) or not ts:
        return MISSING
    try:
        when = _dt.datetime.fromtimestamp(float(ts))
    except (OverflowError, OSError, ValueError):  # not a time this platform can show
        return fmt_float(ts)
    today = _dt.datetime.fromtimestamp(now).date() if now is not None else _dt.date.today()
    return when.strftime("%H:%M:%S" if when.date() == today else "%Y-%m-%d %H:%M:%S")


def quartiles(values: Iterable[Any]) -> tuple[float, float, float] | None:
    """(q25, median, q75) of the values that are not missing (linear interpolation, as numpy
    does by default); None when none are left."""
    xs = sorted(float(v) for v in values if not is_missing(v))
    if not xs:
        return None

    def at(q: float) -> float:
        pos = q * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


def fmt_spread(values: Sequence[Any], fmt: Any = fmt_float) -> str:
    """The median of ``values`` with their interquartile range: ``0.912 (IQR 0.900-0.920)``;
    only the value for one value (or equal ones), :data:`MISSING` when all are missing."""
    q = quartiles(values)
    if q is None:
        return MISSING
    lo, mid, hi = (fmt(v) for v in q)
    return mid if lo == hi else f"{mid} (IQR {lo}-{hi})"


def html_table(
    header: Sequence[Any], rows: Iterable[Sequence[Any]], caption: str | None = None
) -> str:
    """A small HTML table; every cell, header and the caption is escaped here (names come from
    users: a strategy or dataset name is never markup)."""

    def cells(tag: str, values: Sequence[Any]) -> str:
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)

    parts = ["<table>"]
    if caption:
        parts.append(f"<caption style='text-align:left'>{html.escape(caption)}</caption>")
    parts.append(f"<thead><tr>{cells('th', header)}</tr></thead><tbody>")
    parts.extend(f"<tr>{cells('td', row)}</tr>" for row in rows)
    parts.append("</tbody></table>")
    return "".join(parts)
