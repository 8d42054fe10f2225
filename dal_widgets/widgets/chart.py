"""A small SVG line chart (an anywidget of a few kilobytes) for training and learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

__all__ = ["LineChart"]


def _clean(values: Any) -> list[float | None]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return [float(v) if np.isfinite(v) else None for v in arr]


class LineChart(anywidget.AnyWidget):
    """Lines with optional bands; set :meth:`set_series` to update in place."""

    _esm = Path(__file__).with_name("chart.js")
    _css = Path(__file__).with_name("chart.css")
    series = traitlets.List(traitlets.Dict()).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    xlabel = traitlets.Unicode("").tag(sync=True)
    empty = traitlets.Unicode("no data yet").tag(sync=True)
    y_range = traitlets.List(traitlets.Float()).tag(sync=True)

    def set_series(self, series: list[dict[str, Any]]) -> None:
        """Replace the lines: each ``{"name", "x", "y"}`` plus optional ``band_lo``/``band_hi``/``color``."""
        out = []
        for sr in series:
            item = {"name": str(sr.get("name", "")), "x": _clean(sr["x"]), "y": _clean(sr["y"])}
            for key in ("band_lo", "band_hi"):
                if sr.get(key) is not None:
                    item[key] = _clean(sr[key])
            if sr.get("color"):
                item["color"] = str(sr["color"])
            out.append(item)
        self.series = out
