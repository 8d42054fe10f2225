"""The selection map: the pool in 2-D, what is labeled, what each round picked.

One long-lived plotly FigureWidget (WebGL scatter), updated in place. Two modes, because plotly
sends hover and selection events through one synced property and a hover right after a box
selection can overwrite it before it reaches Python (see shared/BROWSER_TESTING.md):

* **Select** (default): box or lasso selection, hover off, so every selection arrives;
  the selected ids go to the labeler with "Label these".
* **Inspect**: hover tooltips (id, label, prediction); the hovered (or clicked) sample is shown
  beside the map: a thumbnail for images, the text, or the row. (Plotly's tooltips cannot hold
  images, so the thumbnail sits in a panel next to the plot.)

Multi-label data (a set of classes per sample) is colored by its set: a sample with exactly one
class takes that class's color, one with several classes a dark "several" color and one labeled
with none of the classes a mid grey (unlabeled samples stay light grey). This holds for given
labels, true labels and predictions (the classes predicted with probability >= 0.5). Coloring
a set by its first class would hide exactly the samples where classes overlap.

Every color mode has a legend (:attr:`EmbeddingPlot.legend` says what it shows): class colors
are listed in a second plotly legend on the right, with the grey "unlabeled" (and the
multi-label "several" / "none") colors where the mode has them; numbers (the strategy's score,
the round of labeling) get a color bar whose title says what the number is. Class names are
escaped before plotly draws them (plotly renders its text as a subset of HTML). The colors
and their legend are computed and drawn in :mod:`dal_widgets.widgets._legend`.

The figure follows the notebook's light or dark theme: transparent backgrounds, text in a
neutral grey that reads on both (:data:`~dal_widgets.widgets._figures.NEUTRAL_TEXT`), replaced
in JupyterLab by the theme's own text color through a small stylesheet.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import numpy as np

from dal_widgets._checks import check_choice, check_int, param_error
from dal_widgets.widgets._figures import (
    fit_to_container,
    plotly_text,
    plotly_theme_css,
    theme_layout,
)
from dal_widgets.widgets._legend import (
    Coloring,
    Legend,
    categorical_marker,
    colorbar,
    compute_coloring,
    draw_legend,
    legend_layout,
    set_values,
)
from dal_widgets.widgets._resize import FitWidth
from dal_widgets.widgets._view import View

__all__ = ["COLOR_MODES", "EmbeddingPlot", "Legend"]

#: "Label these" opens at most this many samples of a selection (in pages of a batch).
_MAX_REVIEW = 2000

#: What the points are colored by.
COLOR_MODES = {
    "labels": "given labels (unlabeled grey)",
    "truth": "true class (when known)",
    "prediction": "the model's predicted class",
    "score": "the strategy's score",
    "round": "round in which it was labeled",
}

_N_TRACES = 5  # pool, candidates, picks, labeler's sample, labeled; legend entries follow


def _label_text(label: Any) -> str:
    """A stored label for people: a class name, or a set of them (multi-label)."""
    if isinstance(label, (tuple, list)):
        return ", ".join(map(str, label)) if label else "none of the classes"
    return str(label)


class EmbeddingPlot(View):
    """A map of the session's pool, linked to its labels, queries and models.

    Display it like any widget (it renders its ``.widget``, an ipywidgets VBox).

    Parameters
    ----------
    session : Session
    labeler : LabelingWidget, optional
        Where "Label these" sends a selection.
    map_method : {"umap", "pca"}
        Which of the session's map services to draw (:meth:`Session.map`: UMAP of the
        model's embeddings once a model exists, PCA first).
    color_by : str
        One of :data:`COLOR_MODES`.
    candidates : int
        How many of the strategy's top-scored unlabeled samples to mark.
    """

    def __init__(
        self,
        session: Any,
        *,
        labeler: Any = None,
        map_method: str = "umap",
        color_by: str = "labels",
        candidates: int = 50,
        height: int = 460,
    ) -> None:
        import ipywidgets as W
        import plotly.graph_objects as go

        from dal_widgets.session import Session

        where = "EmbeddingPlot"
        if not isinstance(session, Session):
            raise param_error("session", where, "a dal_widgets.Session", session, TypeError)
        self.session = session
        self.labeler = labeler
        self.candidates = check_int(candidates, "candidates", where, lo=0)
        check_choice(color_by, "color_by", where, COLOR_MODES)
        #: The session's map service this view draws (refreshed by the session after fits).
        self.projector = session.map(map_method)
        self.selected_ids: list[Any] = []
        self._current_id: Any = None
        super().__init__()
        self._lock = threading.RLock()
        self._replay: int | None = None  # None = live, else the round shown
        ds = session.dataset
        coords = self.projector.current().coords
        start = categorical_marker(len(session.classes), session.multi_label)

        self.figure = go.FigureWidget(
            data=[
                go.Scattergl(
                    x=coords[:, 0],
                    y=coords[:, 1],
                    mode="markers",
                    name="pool",
                    marker={
                        "size": 5,
                        "color": np.full(len(ds), -1.0),
                        "cmin": start["cmin"],
                        "colorscale": start["colorscale"],
                        "cmax": start["cmax"],
                        "line": {"width": 0},
                    },
                    hoverinfo="text",
                    text=None,
                    showlegend=False,
                ),
                go.Scattergl(
                    x=[],
                    y=[],
                    mode="markers",
                    name="candidates",
                    hoverinfo="skip",
                    marker={
                        "size": 8,
                        "symbol": "diamond-open",
                        "color": "#8a8a8a",  # a grey seen on white and on dark themes
                        "line": {"width": 1},
                    },
                ),
                go.Scattergl(
                    x=[],
                    y=[],
                    mode="markers",
                    name="this round's picks",
                    hoverinfo="skip",
                    marker={
                        "size": 12,
                        "symbol": "circle-open",
                        "color": "#d62728",
                        "line": {"width": 2},
                    },
                ),
                go.Scattergl(
                    x=[],
                    y=[],
                    mode="markers",
                    name="labeler's sample",
                    hoverinfo="skip",
                    marker={
                        "size": 18,
                        "symbol": "square-open",
                        # Magenta: seen on white and on dark themes (black vanished on dark).
                        "color": "#d500f9",
                        "line": {"width": 2},
                    },
                ),
                # Labeled samples again, larger and on top: in a big pool they would otherwise
                # hide under the grey points drawn after them.
                go.Scattergl(
                    x=[],
                    y=[],
                    mode="markers",
                    name="labeled",
                    hoverinfo="skip",
                    showlegend=False,
                    marker={"size": 8, "color": [], "line": {"width": 0.5, "color": "white"}},
                ),
            ],
            layout=go.Layout(
                height=height,
                margin={"l": 10, "r": 10, "t": 10, "b": 10},
                template="plotly_white",
                dragmode="select",
                hovermode=False,
                uirevision="keep",
            ),
        )
        self.figure.update_layout(theme_layout())
        self.figure.update_layout(
            xaxis={"visible": False},
            yaxis={"visible": False, "scaleanchor": "x"},
            # The overlays (candidates, picks, the labeler's sample), over the map's top edge:
            # a faint grey veil keeps the text readable over points on light and dark themes.
            legend={"orientation": "h", "y": 1.0, "x": 0, "bgcolor": "rgba(128,128,128,0.12)"},
            legend2=legend_layout(),  # the colors (see ``legend``), right of the map
        )
        self.figure.add_class("dal-map")
        fit_to_container(self.figure)  # with FitWidth (below): the map takes its column's width
        self.color_by = W.Dropdown(
            options=[(v, k) for k, v in COLOR_MODES.items()],
            value=color_by,
            description="color",
            layout=W.Layout(width="300px"),
        )
        self.mode = W.ToggleButtons(
            options=["Select", "Inspect"],
            value="Select",
            tooltips=["box / lasso selection", "hover and click for details"],
        )
        self.mode.style.button_width = "70px"
        # Buttons as wide as their text: "Label these (1,267)" is never cut.
        # Wide enough for "Label these (99,999)": the count is never cut. (A width of "auto"
        # here kept plotly's figure from growing with its column.)
        self.label_button = W.Button(
            description="Label these (0)", disabled=True, icon="tag", layout=W.Layout(width="190px")
        )
        self.clear_button = W.Button(description="Clear", disabled=True)
        self.status = W.HTML()
        self.rounds = W.IntSlider(
            min=0,
            max=max(session.round, 0),
            value=max(session.round, 0),
            description="round",
            continuous_update=False,
            layout=W.Layout(width="320px"),
        )
        self.live = W.Checkbox(
            value=True, description="live", indent=False, layout=W.Layout(width="70px")
        )
        self.detail = W.Output(layout=W.Layout(width="220px", min_height="120px"))
        self.detail.add_class("dal-map-detail")
        self.detail_box = W.VBox([W.HTML("<b>Sample</b>"), self.detail])
        # The map's text in JupyterLab's theme colors (a <style> element applies while hidden).
        # The map fills its row; below 300 + 220 px the sample panel wraps under it (a fixed
        # basis: "auto" would be the figure's drawn width, so it would never unwrap).
        theme = W.HTML(
            plotly_theme_css(".dal-map")
            + "<style>.dal-embedding .dal-map { flex: 1 1 300px; min-width: 0; }</style>",
            layout=W.Layout(display="none"),
        )
        self.widget = W.VBox(
            [
                W.HBox(
                    [self.mode, self.color_by, self.label_button, self.clear_button],
                    layout=W.Layout(flex_flow="row wrap", align_items="center"),
                ),
                W.HBox(
                    [self.figure, self.detail_box],
                    layout=W.Layout(width="100%", flex_flow="row wrap"),
                ),
                W.HBox([self.rounds, self.live, self.status]),
                theme,
                FitWidth(),  # the figure takes its column's width, and follows it
            ]
        )
        self.widget.add_class("dal-embedding")

        self.color_by.observe(lambda _c: self._safe(self.redraw), "value")
        self.mode.observe(lambda _c: self._safe(self._set_mode), "value")
        self.rounds.observe(lambda _c: self._safe(self._on_round), "value")
        self.live.observe(lambda _c: self._safe(self._on_live), "value")
        self.label_button.on_click(lambda _b: self._safe(self.label_selection))
        self.clear_button.on_click(lambda _b: self._safe(self.clear_selection))
        #: The sample in the detail panel (None before the first), and its widgets (body, caption).
        self.shown: Any = None
        self.panel: tuple[Any, Any] | None = None
        self._predicted: list[str] | None = None  # "class (p%)" per pool position
        self._legend: Legend | None = None  # the legend drawn last
        pool = self.figure.data[0]
        pool.on_selection(
            lambda _t, points, _s: self._safe(lambda: self.select_positions(points.point_inds))
        )
        pool.on_deselect(lambda _t, _p: self._safe(self.clear_selection))
        pool.on_click(lambda _t, points, _s: self._safe(lambda: self.hover(points.point_inds)))
        pool.on_hover(lambda _t, points, _s: self._safe(lambda: self.hover(points.point_inds)))
        self._unsubscribe += [
            session.on(event, lambda **_kw: self._safe(self.redraw))
            for event in ("labeled", "undone", "marked", "queried", "class_added")
        ]
        self._unsubscribe.append(session.on("trained", lambda **_kw: self._safe(self.redraw)))
        self._unsubscribe.append(
            session.on("map_changed", lambda projection: self._safe(self._on_map(projection)))
        )
        self._on_map(self.projector.current())()  # a map published before we subscribed

    # ------------------------------------------------------------------ display
    def _show_error(self, exc: Exception) -> None:
        last = f"{type(exc).__name__}: {exc}"
        self.status.value = f"<span style='color:#c62828'>{html.escape(last)}</span>"

    # ------------------------------------------------------------------ state -> arrays
    def _label_positions(self, upto_round: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions, color values and rounds of the labeled samples (as of a round).

        The color value is the class index; for multi-label data see
        :func:`~dal_widgets.widgets._legend.set_values`.
        """
        records = self.session.store.records()
        if upto_round is not None:
            records = [r for r in records if r["round"] <= upto_round]
        if not records:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        index = {c: i for i, c in enumerate(self.session.classes)}
        pos = self.session.dataset.positions([r["sample_id"] for r in records])
        rnd = np.array([r["round"] for r in records], dtype=np.int64)
        if not self.session.multi_label:
            cls = np.array([index.get(r["label"], -1) for r in records], dtype=np.int64)
            return pos, cls, rnd
        # Each label is a set of class names: one (row, class) pair per member, then a 0/1 matrix.
        sets = [r["label"] for r in records]
        rows = np.repeat(np.arange(len(sets)), [len(labels) for labels in sets])
        cols = np.array([index.get(c, -1) for labels in sets for c in labels], dtype=np.int64)
        hot = np.zeros((len(sets), len(index)), dtype=bool)
        known = cols >= 0
        hot[rows[known], cols[known]] = True
        return pos, set_values(hot), rnd

    def _picks(self, rnd: int | None) -> np.ndarray:
        log = self.session.store.queries()
        if rnd is not None:
            log = [q for q in log if q["round"] == rnd]
        if not log:
            return np.zeros(0, dtype=np.int64)
        return self.session.dataset.positions(log[-1]["ids"])

    def colors(self, labeled: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The per-point color values and the pool's marker settings for the current mode
        (``labeled``: the labeled positions, classes and rounds when already read).

        In the categorical modes a value is a class index (for multi-label data see the module
        notes) and -1 grey; in "round" -1 is an unlabeled sample (grey) and a labeled one has
        its round; in "score" a value is the strategy's score. :attr:`legend` says which.
        """
        coloring = self._coloring(labeled)
        return coloring.values, coloring.marker

    @property
    def legend(self) -> Legend:
        """What the map's colors mean, as drawn last (the legend beside the map, and the color
        bar for numbers): see :class:`Legend`."""
        if self._legend is None:  # only before the first draw
            return self._coloring(None).legend
        return self._legend

    def _coloring(self, labeled: Any) -> Coloring:
        """The current color mode evaluated (``labeled``: :meth:`_label_positions` of the
        round shown, when already read)."""

        def read() -> Any:
            return self._label_positions(self._replay) if labeled is None else labeled

        return compute_coloring(self.session, self.color_by.value, read)

    # ------------------------------------------------------------------ updates
    def redraw(self) -> None:
        """Recompute colors and overlays from the session and push them in one update."""
        with self._lock:
            self.rounds.max = max(self.session.round, 0)
            if self._replay is None:
                self.rounds.value = self.rounds.max
            labeled_now = self._label_positions(self._replay)  # the store is read once
            coloring = self._coloring(labeled_now)
            values, marker, overlay = coloring.values, coloring.marker, coloring.overlay
            bar = colorbar(coloring.legend)
            coords = self.projector.current().coords
            picks = self._picks(self._replay)
            cand = self._candidate_positions() if self._replay is None else np.zeros(0, np.int64)
            labels = self.session.labels
            pool, cands, picked, current, labeled = self.figure.data[:_N_TRACES]
            with self.figure.batch_update():
                pool.marker.color = values
                pool.marker.colorscale = marker["colorscale"]
                pool.marker.cmin = marker["cmin"]
                pool.marker.cmax = marker["cmax"]
                pool.marker.showscale = marker.get("showscale", False)
                if marker.get("showscale") and bar is not None:
                    pool.marker.colorbar = bar
                if self.mode.value == "Inspect":
                    pool.text = self._hover_text(labels)
            at = self._current_positions()
            for trace, pos in ((cands, cand), (picked, picks), (current, at)):
                self._set_xy(trace, coords[pos])
            shown = labeled_now[0]
            with self._lock, self.figure.batch_update():
                labeled.x, labeled.y = coords[shown, 0], coords[shown, 1]
                labeled.marker.color = values[shown]
                labeled.marker.colorscale = overlay["colorscale"]
                labeled.marker.cmin, labeled.marker.cmax = overlay["cmin"], overlay["cmax"]
                labeled.marker.showscale = overlay.get("showscale", False)
                if overlay.get("showscale") and bar is not None:
                    labeled.marker.colorbar = bar
            self._draw_legend(coloring.legend)
            self._update_status(len(labels))

    def _draw_legend(self, legend: Legend) -> None:
        """Draw ``legend`` beside the map; nothing is sent when it did not change (most
        redraws)."""
        if legend != self._legend:
            draw_legend(self.figure, legend, _N_TRACES)
            self._legend = legend

    def _set_xy(self, trace: Any, xy: np.ndarray) -> None:
        """Move one trace's points.

        One batch per trace: a plotly (7.1) FigureWidget batch that changes ``x`` on some traces
        resets ``x`` on the others in the browser, which made the whole pool vanish.
        """
        with self._lock, self.figure.batch_update():
            trace.x, trace.y = xy[:, 0], xy[:, 1]

    def _candidate_positions(self) -> np.ndarray:
        last = self.session.last_query
        if not self.candidates or last is None or last.scores is None:
            return np.zeros(0, dtype=np.int64)
        scores = np.asarray(last.scores, dtype=np.float64).copy()
        labeled = list(self.session.labels)
        if labeled:
            scores[self.session.dataset.positions(labeled)] = -np.inf
        k = min(self.candidates, int(np.isfinite(scores).sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        return np.argpartition(-scores, k - 1)[:k]

    def _hover_text(self, labels: dict[Any, str]) -> list[str]:
        ds = self.session.dataset
        ids = ds.ids.tolist()
        pred = None
        if self.session.model is not None:
            probs = self.session.predict_proba()
            classes = self.session.classes
            if self.session.multi_label:  # the set of classes predicted with p >= 0.5
                # One text per distinct set (there are few), then picked for every sample.
                sets, which = np.unique(probs >= 0.5, axis=0, return_inverse=True)
                names = [_label_text([classes[j] for j in np.flatnonzero(row)]) for row in sets]
                pred = np.asarray(names, dtype=object)[which.reshape(-1)].tolist()
            else:
                top = probs.argmax(1)
                pred = [
                    f"{classes[t]} ({p:.0%})" for t, p in zip(top.tolist(), probs.max(1).tolist())
                ]
        self._predicted = pred
        return [
            plotly_text(
                f"id {sid} · label {_label_text(labels[sid]) if sid in labels else '-'}"
                + ("" if pred is None else f" · predicted {pred[i]}")
            )
            for i, sid in enumerate(ids)
        ]

    def _update_status(self, n_labels: int) -> None:
        proj = self.projector.current()
        what = f"{proj.method.upper()} of {'model v' + str(proj.model_version) + ' embeddings' if proj.source == 'embeddings' else 'raw features'}"
        busy = " · computing a newer map…" if self.projector.status.startswith("computing") else ""
        shown = "live" if self._replay is None else f"replaying round {self._replay}"
        self.status.value = html.escape(f"{what}{busy} · {n_labels} labeled · {shown}")

    def _on_map(self, proj: Any) -> Any:
        def draw() -> None:
            if proj.method == self.projector.method:  # another view's map is not ours
                self._set_xy(self.figure.data[0], proj.coords)
                self.redraw()

        return draw

    def _set_mode(self) -> None:
        inspect = self.mode.value == "Inspect"
        with self._lock, self.figure.batch_update():
            self.figure.layout.hovermode = "closest" if inspect else False
            self.figure.layout.dragmode = "pan" if inspect else "select"
        self.redraw()

    def _on_round(self) -> None:
        if self.rounds.value >= self.rounds.max and self.live.value:
            self._replay = None
        else:
            self._replay = self.rounds.value
            self.live.value = False
        self.redraw()

    def _on_live(self) -> None:
        if self.live.value:
            self._replay = None
            self.rounds.value = self.rounds.max
            self.redraw()

    # ------------------------------------------------------------------ selection (public)
    def select_positions(self, positions: Any) -> list[Any]:
        """Select pool positions (what a box or lasso selection does); returns their ids."""
        pos = np.asarray(list(positions), dtype=np.int64)
        ds = self.session.dataset
        if pos.size and (pos.min() < 0 or pos.max() >= len(ds)):
            bad = int(pos[(pos < 0) | (pos >= len(ds))][0])
            raise param_error(
                "positions",
                "EmbeddingPlot.select_positions",
                f"pool positions in [0, {len(ds)})",
                bad,
            )
        self.selected_ids = [ds.python_id(i) for i in ds.ids[pos]] if pos.size else []
        n = len(self.selected_ids)
        self.label_button.description = f"Label these ({n})"
        self.label_button.disabled = n == 0 or self.labeler is None
        self.clear_button.disabled = n == 0
        return list(self.selected_ids)

    def select_ids(self, ids: Any) -> list[Any]:
        """Select samples by id."""
        return self.select_positions(
            self.session.dataset.positions(list(ids), where="EmbeddingPlot.select_ids")
        )

    def clear_selection(self) -> None:
        """Forget the selection."""
        self.select_positions([])

    def label_selection(self) -> list[Any]:
        """Open the unlabeled part of the selection in the labeler as a paged review, grouped
        by the model's suggestion ("Label these"); returns the ids in review order."""
        if self.labeler is None:
            raise ValueError(
                "This map is not linked to a labeler (pass labeler= to EmbeddingPlot)."
            )
        labeled = self.session.labels
        ids = [i for i in self.selected_ids if i not in labeled][:_MAX_REVIEW]
        if not ids:
            raise ValueError("The selection holds no unlabeled samples.")
        return list(self.labeler.review(ids, title="from the map"))

    def highlight(self, ids: Any) -> None:
        """Mark samples as this round's picks (e.g. the labeler's batch)."""
        pos = self.session.dataset.positions(list(ids), where="EmbeddingPlot.highlight")
        coords = self.projector.current().coords
        self._set_xy(self.figure.data[2], coords[pos])

    def _current_positions(self) -> np.ndarray:
        if self._current_id is None:
            return np.zeros(0, dtype=np.int64)
        return self.session.dataset.positions([self._current_id])

    def mark_current(self, sample_id: Any) -> None:
        """Mark the sample the labeler is on (the App links the labeler's cursor here)."""
        self._current_id = self.session.dataset.python_id(sample_id)
        coords = self.projector.current().coords
        at = self._current_positions()
        self._set_xy(self.figure.data[3], coords[at])

    def hover(self, positions: Any) -> None:
        """What a hover or a click on pool points does (positions into the dataset): in
        Inspect mode, show the first one beside the map."""
        pos = list(positions)
        if not pos or self.mode.value != "Inspect":
            return
        sid = self.session.dataset.ids[pos[0]]
        if sid != self.shown:  # hover events repeat while the pointer rests on a point
            self.show_sample(sid)

    def show_sample(self, sample_id: Any) -> None:
        """Show one sample beside the map (what hovering or a click in Inspect mode does)."""
        import ipywidgets as W
        from IPython.display import display

        ds = self.session.dataset
        sid = ds.python_id(sample_id)
        rendered = ds.render(sid)
        labels = self.session.labels
        text = f"id {sid} · {_label_text(labels[sid]) if sid in labels else 'unlabeled'}"
        if self._predicted is not None:
            text += f" · predicted {self._predicted[ds.positions([sid])[0]]}"
        caption = W.HTML(html.escape(text))
        self.shown = sid
        if ds.kind == "image":
            body: Any = W.Image(value=rendered, format="png", layout=W.Layout(width="160px"))
        elif ds.kind == "text":
            body = W.HTML(
                f"<div style='white-space:pre-wrap;max-height:200px;overflow:auto'>{html.escape(rendered)}</div>"
            )
        else:
            rows = "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{v:.4g}</td></tr>"
                for k, v in rendered.items()
            )
            body = W.HTML(f"<table>{rows}</table>")
        self.panel = (body, caption)
        self.detail.clear_output()
        with self.detail:
            display(W.VBox([body, caption]))
