"""dal_widgets: Jupyter widgets for deep active learning.

The headless core (``datasets``, ``strategies``, ``Session``, ``simulate``) works without
Jupyter; the widgets (``App``, ``LabelingWidget``, ...) are thin views over a ``Session``.
Everything heavy (torch, umap, plotly) is imported on first use, so ``import dal_widgets`` is fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from dal_widgets._checks import DalWarning

__version__ = "0.1.0"

__all__ = [
    "App",
    "CompareWidget",
    "DalWarning",
    "EmbeddingPlot",
    "LabelingWidget",
    "Session",
    "StopMonitor",
    "Team",
    "TrainConfig",
    "agreement",
    "datasets",
    "encoders",
    "simulate",
    "stopping",
    "strategies",
]

# name -> (module, attribute or None for the module itself)
_LAZY = {
    "datasets": ("dal_widgets.data", None),
    "strategies": ("dal_widgets.strategies", None),
    "encoders": ("dal_widgets.encoders", None),
    "store": ("dal_widgets.store", None),
    "training": ("dal_widgets.training", None),
    "Session": ("dal_widgets.session", "Session"),
    "simulate": ("dal_widgets.simulation", "simulate"),
    "TrainConfig": ("dal_widgets.training", "TrainConfig"),
    "LabelingWidget": ("dal_widgets.widgets.labeler", "LabelingWidget"),
    "EmbeddingPlot": ("dal_widgets.widgets.embedding", "EmbeddingPlot"),
    "App": ("dal_widgets.widgets.app", "App"),
    "CompareWidget": ("dal_widgets.widgets.compare", "CompareWidget"),
    "projection": ("dal_widgets.projection", None),
    "stopping": ("dal_widgets.stopping", None),
    "StopMonitor": ("dal_widgets.stopping", "StopMonitor"),
    "agreement": ("dal_widgets.interrater", "agreement"),
    "Team": ("dal_widgets.team", "Team"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'dal_widgets' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
