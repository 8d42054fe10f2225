"""The Jupyter views: the only part of dal_widgets that imports ipywidgets, anywidget or plotly.

Submodules are imported on first use, so importing this package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "App",
    "CompareWidget",
    "EmbeddingPlot",
    "LabelingWidget",
    "LineChart",
    "QualityPanel",
    "register_renderer",
]

_LAZY = {
    "CompareWidget": "dal_widgets.widgets.compare",
    "App": "dal_widgets.widgets.app",
    "LineChart": "dal_widgets.widgets.chart",
    "EmbeddingPlot": "dal_widgets.widgets.embedding",
    "LabelingWidget": "dal_widgets.widgets.labeler",
    "QualityPanel": "dal_widgets.widgets.quality",
    "register_renderer": "dal_widgets.widgets.labeler",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dal_widgets.widgets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
