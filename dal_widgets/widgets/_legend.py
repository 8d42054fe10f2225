"""The selection map's colors and the legend that explains them.

For each color mode of :class:`~dal_widgets.widgets.embedding.EmbeddingPlot`,
:func:`compute_coloring` gives the color value of every pool point, the markers of the pool and
of the labeled overlay, and the :class:`Legend`: what the colors mean. The map draws the legend
with :func:`draw_legend` (class colors, as placeholder traces listed in plotly's second legend)
and :func:`colorbar` (numbers: the strategy's score, the round of labeling).

Categories are drawn through a stepped colorscale: value -1 is grey (unlabeled), 0..C-1 the
class colors and, for multi-label data, C "several classes" and C + 1 "none of the classes"
(see :func:`set_values`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dal_widgets.widgets._figures import PALETTE, plotly_text

__all__ = [
    "GREY",
    "Coloring",
    "Legend",
    "categorical_marker",
    "colorbar",
    "compute_coloring",
    "draw_legend",
    "legend_layout",
    "set_values",
]

GREY = "#d0d0d0"  # unlabeled, and "nothing to color by yet"
# Multi-label: a sample with several classes. A dark grey that still shows on a dark theme
# (#2b2b2b vanished on JupyterLab's #111).
SEVERAL = "#636363"
NO_CLASS = "#8c8c8c"  # multi-label: labeled with none of the classes
SCALE = "Viridis"  # the continuous modes' colorscale
NAME_CHARS = 28  # longer class names are shortened in the legend (Legend keeps them whole)

#: Positions, class values and rounds of the labeled samples (see ``EmbeddingPlot``).
Labeled = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Legend:
    """What the map's colors mean: what its legend and color bar show.

    Attributes
    ----------
    mode : str
        The color mode (a key of :data:`~dal_widgets.widgets.embedding.COLOR_MODES`).
    title : str
        What the color encodes, e.g. ``"true class"`` or ``"round labeled in"``.
    entries : tuple of (str, str)
        ``(label, color)`` for each color of a category, in legend order: one per class, then
        the special colors the mode uses ("several classes", "none of the classes",
        "unlabeled", "no model yet", ...). Labels are plain text, as given (escaped when drawn).
    scale : (float, float) or None
        ``(min, max)`` of the color bar for numbers (score, round); None without one.
    colorscale : str or None
        The plotly colorscale of the color bar.
    note : str
        How to read the color bar (e.g. ``"higher = asked sooner"``), or empty.
    """

    mode: str
    title: str
    entries: tuple[tuple[str, str], ...] = ()
    scale: tuple[float, float] | None = None
    colorscale: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Coloring:
    """One color mode evaluated: the pool's color values and marker, the labeled overlay's
    marker, and the legend that explains them."""

    values: np.ndarray
    marker: dict[str, Any]
    overlay: dict[str, Any]
    legend: Legend


# ---------------------------------------------------------------------------------- colors
def categorical_scale(n_classes: int, multi_label: bool = False) -> list[list[Any]]:
    """A stepped colorscale: value -1 is grey (unlabeled), 0..C-1 the class colors and, for
    multi-label data, C "several classes" and C + 1 "none of the classes"."""
    colors = [GREY] + [PALETTE[i % len(PALETTE)] for i in range(n_classes)]
    if multi_label:
        colors += [SEVERAL, NO_CLASS]
    steps = len(colors)
    scale: list[list[Any]] = []
    for i, c in enumerate(colors):
        scale += [[i / steps, c], [(i + 1) / steps, c]]
    return scale


def categorical_marker(n_classes: int, multi_label: bool) -> dict[str, Any]:
    """Marker settings that draw class values through :func:`categorical_scale`."""
    return {
        "colorscale": categorical_scale(n_classes, multi_label),
        "cmin": -1,
        "cmax": n_classes - 1 + (2 if multi_label else 0),
        "showscale": False,
    }


def set_values(hot: np.ndarray) -> np.ndarray:
    """Color values of (N, C) class sets: the class when there is one, C for several, C + 1
    for none."""
    hot = np.asarray(hot, dtype=bool)
    n_classes = hot.shape[1]
    count = hot.sum(1)
    return np.where(
        count == 1, hot.argmax(1), np.where(count > 1, n_classes, n_classes + 1)
    ).astype(np.float32)


def compute_coloring(session: Any, mode: str, labeled: Callable[[], Labeled]) -> Coloring:
    """Evaluate color mode ``mode`` for ``session``'s pool.

    ``labeled`` returns the labeled samples' positions, class values and rounds; it is called
    only by the modes that color by the labels ("labels", "round").
    """
    ds = session.dataset
    multi = session.multi_label
    classes = session.classes
    values = np.full(len(ds), -1.0, dtype=np.float32)
    categorical = categorical_marker(len(classes), multi)

    def by_class(title: str, vals: np.ndarray, unlabeled: bool = False) -> Coloring:
        entries = [(str(c), PALETTE[i % len(PALETTE)]) for i, c in enumerate(classes)]
        if multi:
            entries += [("several classes", SEVERAL), ("none of the classes", NO_CLASS)]
        if unlabeled:
            entries.append(("unlabeled", GREY))
        return Coloring(vals, categorical, categorical, Legend(mode, title, tuple(entries)))

    def grey(title: str, why: str) -> Coloring:  # nothing to color by yet
        return Coloring(values, categorical, categorical, Legend(mode, title, ((why, GREY),)))

    if mode in ("labels", "round"):
        pos, cls, rnd = labeled()
        if mode == "labels":
            values[pos] = cls
            return by_class("given label", values, unlabeled=True)
        values[pos] = rnd
        top = max(int(rnd.max(initial=0)), 1)
        # The pool is all grey (unlabeled samples keep -1); the labeled samples, drawn on
        # top, carry the rounds and the color bar. (A NaN for "unlabeled" drew plotly's
        # dark default color, not grey.)
        flat = {"colorscale": [[0, GREY], [1, GREY]], "cmin": -1, "cmax": top}
        bar = {"colorscale": SCALE, "cmin": 0, "cmax": top, "showscale": True}
        legend = Legend(mode, "round labeled in", (("unlabeled", GREY),), (0.0, float(top)), SCALE)
        return Coloring(values, {**flat, "showscale": False}, bar, legend)
    if mode == "truth":
        if ds.targets is None:
            raise ValueError("This dataset has no known labels to color by; choose another mode.")
        truth = set_values(ds.targets) if multi else ds.targets.astype(np.float32)
        return by_class("true class", truth)
    title = "predicted class" if mode == "prediction" else "strategy score"
    if session.model is None:
        return grey(title, "no model yet")  # everything grey
    if mode == "prediction":
        probs = session.predict_proba()  # per-class sigmoids when multi-label
        if multi:
            return by_class("predicted classes (p \u2265 0.5)", set_values(probs >= 0.5))
        return by_class(title, probs.argmax(1).astype(np.float32))
    last = session.last_query
    if last is None:
        return grey(title, "no query yet")
    if last.scores is None:
        return grey(title, f"{last.strategy} picks a batch jointly: no per-sample scores")
    scores = np.asarray(last.scores, dtype=np.float32)
    lo, hi = float(np.min(scores)), float(np.max(scores))
    marker = {"colorscale": SCALE, "cmin": lo, "cmax": hi, "showscale": True}
    legend = Legend(
        mode, f"{last.strategy} score", (), (lo, hi), SCALE, note="higher = asked sooner"
    )
    return Coloring(scores, marker, {**marker, "showscale": False}, legend)


# ---------------------------------------------------------------------------------- drawing
def legend_layout() -> dict[str, Any]:
    """plotly layout of the class legend (``legend2``), right of the map.

    Its entries are not traces to toggle, so clicks do nothing. It pushes the figure's right
    margin out to its own width; it shows as long as the figure has its column's width (see
    :func:`~dal_widgets.widgets._figures.fit_to_container`).
    """
    return {
        "orientation": "v",
        "x": 1.02,
        "xanchor": "left",
        "y": 1.0,
        "yanchor": "top",
        "bgcolor": "rgba(0,0,0,0)",
        "itemclick": False,
        "itemdoubleclick": False,
        "itemsizing": "constant",
    }


def colorbar(legend: Legend) -> dict[str, Any] | None:
    """The plotly color bar of a legend with a scale: the title says what the number is."""
    if legend.scale is None:
        return None
    text = plotly_text(legend.title)
    if legend.note:
        text += f"<br>({plotly_text(legend.note)})"
    bar: dict[str, Any] = {
        "title": {"text": text, "side": "right"},
        "thickness": 12,
        "len": 0.7,
        "x": 1.02,
        "xanchor": "left",
        "y": 0,
        "yanchor": "bottom",
        "outlinewidth": 0,
    }
    if legend.mode == "round":  # whole rounds: one tick per round while there are few
        lo, hi = legend.scale
        bar["tickformat"] = "d"
        if hi - lo <= 10:
            bar.update(tickmode="linear", tick0=0, dtick=1)
    return bar


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "\u2026"


def draw_legend(figure: Any, legend: Legend, first: int) -> None:
    """Show ``legend``'s entries in ``figure``'s second legend.

    One placeholder trace per entry (no points) from trace ``first`` on: added when more are
    needed and hidden when fewer, so the traces before them keep their indices.
    """
    import plotly.graph_objects as go

    spare = len(figure.data) - first
    if len(legend.entries) > spare:
        figure.add_traces(
            [
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    legend="legend2",
                    hoverinfo="skip",
                    showlegend=False,
                    marker={"size": 10, "symbol": "circle"},
                )
                for _ in range(len(legend.entries) - spare)
            ]
        )
    with figure.batch_update():
        for i, trace in enumerate(figure.data[first:]):
            if i < len(legend.entries):
                name, color = legend.entries[i]
                trace.name = plotly_text(_short(name))
                trace.marker.color = color
                trace.showlegend = True
            else:
                trace.showlegend = False
        # A color bar carries its own title; the legend then only adds the grey's meaning.
        figure.layout.legend2.title.text = plotly_text(legend.title) if legend.scale is None else ""
