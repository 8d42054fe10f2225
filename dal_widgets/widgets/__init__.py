"""The Jupyter views: the only part of dal_widgets that imports ipywidgets, anywidget or plotly.

Submodules are imported on first use, so importing this package costs nothing.
"""

from __future__ import annotations

__all__: list[str] = []
