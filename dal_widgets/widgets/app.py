"""The dashboard: labeler, selection map, training panel, learning curve and controls, linked."""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

from dal_widgets._checks import check_int, param_error
from dal_widgets.widgets._view import View

__all__ = ["App"]

_RETRAIN = [
    ("after each label", "label"),
    ("after each batch", "batch"),
    ("every 10 labels", 10),
    ("every 50 labels", 50),
    ("manual", "manual"),
]


class App(View):
    """Everything for one session in one cell: label, see, train, compare.

    Linked: labeling a sample colors it on the map and the sample under the labeler's cursor
    is marked there; a box or lasso selection on the map fills the labeler ("Label these").
    The session evaluates each finished fit on the held-out split (when the dataset has one);
    the learning curve draws its history.

    Parameters
    ----------
    session : Session
    batch_size : int
        Samples per query batch.
    budget : int, optional
        Shown as labeled / budget.
    map_method : {"umap", "pca"}
        How the map is computed (UMAP replaces a PCA first paint when ready).
    export_dir : str or path
        Where "Export labels" and "Export model" write (default: beside the store, or ".").

    Notes
    -----
    Every control has a public method: :meth:`set_strategy`, :meth:`set_batch_size`,
    :meth:`set_retrain`, :meth:`fit_all`, :meth:`stop`, :meth:`export_labels`,
    :meth:`export_model`; and the parts are attributes: ``labeler``, ``map``, ``loss_chart``,
    ``curve_chart``.
    """

    def __init__(
        self,
        session: Any,
        *,
        batch_size: int = 10,
        budget: int | None = None,
        map_method: str = "umap",
        export_dir: Any = None,
    ) -> None:
        import ipywidgets as W

        from dal_widgets import strategies
        from dal_widgets.session import Session
        from dal_widgets.stopping import StopMonitor
        from dal_widgets.store import LabelStore
        from dal_widgets.widgets.chart import LineChart
        from dal_widgets.widgets.embedding import EmbeddingPlot
        from dal_widgets.widgets.labeler import LabelingWidget
        from dal_widgets.widgets.quality import QualityPanel

        if not isinstance(session, Session):
            raise param_error("session", "App", "a dal_widgets.Session", session, TypeError)
        self.session = session
        super().__init__()
        store_path = session.store.path
        on_disk = isinstance(session.store, LabelStore) and store_path != ":memory:"
        default_dir = Path(store_path).parent if on_disk else Path(".")
        self.export_dir = Path(export_dir) if export_dir is not None else default_dir
        self._loss: list[tuple[float, float]] = []
        self._lock = threading.Lock()

        self.labeler = LabelingWidget(session, batch_size=batch_size, budget=budget)
        self.map = EmbeddingPlot(
            session,
            labeler=self.labeler,
            map_method=map_method,
            height=420,
        )
        self.map.detail_box.layout.display = "none"  # the labeler shows the samples in the App
        self.loss_chart = LineChart(
            title="Training loss (current fit)", xlabel="step", empty="no fit yet"
        )
        self.curve_chart = LineChart(
            title="Held-out accuracy",
            xlabel="labels",
            y_range=[0.0, 1.0],
            empty="evaluated after each fit"
            if session.dataset.has_holdout
            else "no held-out split",
        )

        facts: dict[str, Any] = {
            "multi_label": session.multi_label,
            "ensemble_size": session.train_config.ensemble_size,
        }
        usable = strategies.usable(**facts)
        #: Strategies this session cannot run, with the reason (left out of the picker).
        self.unusable = {
            name: strategies.unusable_reason(name, **facts)
            for name in strategies.describe()
            if name not in usable
        }
        self.strategy = W.Dropdown(
            options=usable if session.strategy in usable else [session.strategy, *usable],
            value=session.strategy,
            description="strategy",
            layout=W.Layout(width="240px"),
        )
        self.strategy_help = W.HTML(layout=W.Layout(max_width="420px"))
        self.batch = W.BoundedIntText(
            value=batch_size, min=1, max=500, description="batch", layout=W.Layout(width="140px")
        )
        choices = list(_RETRAIN)
        if not any(v == session.retrain for _, v in choices):  # e.g. every 7 labels
            choices.insert(-1, (f"every {session.retrain} labels", session.retrain))
        self.retrain = W.Dropdown(
            options=choices,
            value=session.retrain,
            description="retrain",
            layout=W.Layout(width="230px"),
        )
        self.review_menu = W.Dropdown(
            options=self._review_options(),
            value="",
            description="review",
            layout=W.Layout(width="260px"),
        )
        self.fit_button = W.Button(description="Fit on all labels", icon="play")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.export_labels_button = W.Button(description="Export labels", icon="download")
        self.export_model_button = W.Button(description="Export model", icon="download")
        self.status = W.HTML()
        self.error_box = W.HTML()
        self.notice = W.HTML()
        self.quality = QualityPanel(session, budget=budget)
        #: The stopping signals (recommendations only: nothing stops by itself).
        self.stop_monitor = StopMonitor(session, budget=budget)
        self.stopping = W.HTML()
        #: Who labels how much, how fast and how well they agree (team sessions; else None).
        self.team_panel: Any = None
        if session.team is not None:
            from dal_widgets.widgets.team_panel import TeamPanel

            self.team_panel = TeamPanel(session)

        self.strategy.observe(lambda c: self._act(lambda: self.set_strategy(c["new"])), "value")
        self.batch.observe(lambda c: self._act(lambda: self.set_batch_size(c["new"])), "value")
        self.retrain.observe(lambda c: self._act(lambda: self.set_retrain(c["new"])), "value")
        self.review_menu.observe(lambda c: self._on_review_menu(c["new"]), "value")
        self.fit_button.on_click(lambda _b: self._act(self.fit_all))
        self.stop_button.on_click(lambda _b: self._act(self.stop))
        self.export_labels_button.on_click(lambda _b: self._act(self.export_labels))
        self.export_model_button.on_click(lambda _b: self._act(self.export_model))

        controls = W.HBox(
            [
                self.strategy,
                self.batch,
                self.retrain,
                self.review_menu,
                self.fit_button,
                self.stop_button,
                self.export_labels_button,
                self.export_model_button,
            ],
            layout=W.Layout(flex_flow="row wrap", align_items="center"),
        )
        # Side by side when the cell is wide enough, stacked when not (a notebook beside an
        # open file browser at 1280 px): rows wrap instead of overflowing.
        self.labeler.layout = W.Layout(flex="1 1 480px", min_width="0", margin="0 8px 8px 0")
        self.map.widget.layout = W.Layout(flex="1 1 440px", min_width="0")
        team = [] if self.team_panel is None else [self.team_panel.widget]
        side = W.VBox(
            [self.status, self.stopping, *team], layout=W.Layout(flex="1 1 220px", min_width="0")
        )
        self.quality.widget.layout = W.Layout(flex="1 1 320px", min_width="0")
        self.loss_chart.layout = W.Layout(flex="1 1 300px", min_width="0")
        self.curve_chart.layout = W.Layout(flex="1 1 300px", min_width="0")
        wrap = W.Layout(width="100%", flex_flow="row wrap", align_items="flex-start")
        self.widget = W.VBox(
            [
                controls,
                self.error_box,  # next to the controls whose action failed or succeeded
                self.notice,
                self.strategy_help,
                W.HBox([self.labeler, self.map.widget], layout=wrap),
                W.HBox([self.loss_chart, self.curve_chart, side, self.quality.widget], layout=wrap),
            ],
            layout=W.Layout(width="100%"),
        )
        self.widget.add_class("dal-app")

        self._unsubscribe += [
            session.on("train_started", lambda **kw: self._safe(self._on_train_started)),
            session.on(
                "train_progress", lambda progress: self._safe(lambda: self._on_progress(progress))
            ),
            session.on("trained", lambda **kw: self._safe(self._on_trained)),
            session.on("evaluated", lambda **kw: self._safe(self._update_curve)),
            # once per fit: after its evaluation when there is one (the kappa is in by then)
            session.on(
                "evaluated"
                if session.dataset.has_holdout and session.evaluate_after_fit
                else "trained",
                lambda **kw: self._safe(self._update_stopping),
            ),
            session.on("train_failed", lambda error: self._safe(lambda: self._on_failed(error))),
            session.on("train_idle", lambda **kw: self._safe(self._update_status)),
            session.on("embedding", lambda **kw: self._safe(self._update_status)),
            session.on("labeled", lambda **kw: self._safe(self._update_status)),
            session.on("undone", lambda **kw: self._safe(self._update_status)),
            session.on("class_added", lambda **kw: self._safe(self._refresh_review_menu)),
        ]
        self.labeler.observe(lambda _c: self._safe(self._follow_cursor), names=["cursor", "items"])
        self._describe_strategy()
        self._update_curve()
        self._update_status()
        self._update_stopping()
        self._follow_cursor()

    # ------------------------------------------------------------------ display
    def _act(self, action: Any) -> None:
        """Run a control's action: its error shows under the controls; success clears it."""
        done = self._safe(lambda: (action(), True)[1])
        if done:
            self.error_box.value = ""

    def _show_error(self, exc: Exception) -> None:
        self.error_box.value = (
            f"<div style='color:#c62828'>{html.escape(f'{type(exc).__name__}: {exc}')}</div>"
        )

    # ------------------------------------------------------------------ controls (public)
    def set_strategy(self, name: str) -> None:
        """Use another strategy from the next batch on (a prefetched batch is dropped)."""
        self.session.strategy = name
        if self.strategy.value != self.session.strategy:
            self.strategy.value = self.session.strategy
        self.labeler.drop_prefetched()
        self._describe_strategy()

    def set_batch_size(self, n: int) -> None:
        """Samples per query batch from the next batch on."""
        self.labeler.batch_size = check_int(n, "n", "App.set_batch_size", lo=1, hi=500)
        if self.batch.value != n:
            self.batch.value = n

    def set_retrain(self, policy: str | int) -> None:
        """``"label"``, ``"batch"``, ``"manual"`` or every k labels (see ``Session.retrain``)."""
        self.session.retrain = policy
        policy = self.session.retrain  # "every label" is stored as "label"
        if self.retrain.value != policy and any(v == policy for _, v in self.retrain.options):
            self.retrain.value = policy

    def review(self, what: str, label: str | None = None) -> list[Any]:
        """Open a review in the labeler: ``"disagree"`` (labels the newest model predicts
        otherwise: likely label errors), ``"skipped"``, ``"flagged"``, ``"labels"`` (all
        labels, or those of class ``label``). Returns the ids in review order."""
        from dal_widgets._checks import check_choice

        what = check_choice(
            what, "what", "App.review", ["disagree", "skipped", "flagged", "labels"]
        )
        if what == "labels":
            return self.labeler.review_labeled(label=label)
        return self.labeler.review_labeled(
            disagree=what == "disagree", skipped=what == "skipped", flagged=what == "flagged"
        )

    def _review_options(self) -> list[tuple[str, Any]]:
        fixed = [
            ("labels the model disagrees with", ("disagree", None)),
            ("skipped samples", ("skipped", None)),
            ("flagged samples", ("flagged", None)),
            ("all labels", ("labels", None)),
        ]
        by_class = [(f"labels of class {c}", ("labels", c)) for c in self.session.classes]
        return [("choose…", ""), *fixed, *by_class]

    def _refresh_review_menu(self) -> None:
        self.review_menu.options = self._review_options()

    def _on_review_menu(self, choice: Any) -> None:
        if not choice:
            return
        self._act(lambda: self.review(*choice))
        self.review_menu.value = ""  # a menu of actions: it shows "choose…" again

    def fit_all(self) -> None:
        """Fit a fresh model on all labels now, in the background."""
        self.session.train()
        self._update_status()

    def stop(self) -> None:
        """Cancel the running fit."""
        self.session.stop()
        self._update_status()

    def export_labels(self, path: Any = None) -> Path:
        """Write the labels to CSV (default: ``<export_dir>/labels.csv``)."""
        target = Path(path) if path is not None else self.export_dir / "labels.csv"
        out = self.session.store.export(target)
        self.notice.value = html.escape(f"Labels written to {out}")
        return out

    def export_model(self, path: Any = None) -> Path:
        """Save the newest model, weights and config in one file (default:
        ``<export_dir>/model.pt``)."""
        target = Path(path) if path is not None else self.export_dir / "model.pt"
        out = self.session.export_model(target)
        self.notice.value = html.escape(f"Model written to {out}")
        return out

    # ------------------------------------------------------------------ session events
    def _describe_strategy(self) -> None:
        from dal_widgets import strategies

        s = strategies.get(self.session.strategy)
        needs = ", ".join(sorted(s.needs)) or "nothing"
        text = (
            f"<span style='color:var(--jp-ui-font-color2,#666)'>{html.escape(s.description)} "
            f"(needs: {html.escape(needs)})</span>"
        )
        if self.unusable:
            rows = "".join(
                f"<li><b>{html.escape(name)}</b>: {html.escape(str(why))}</li>"
                for name, why in self.unusable.items()
            )
            text += (
                "<details style='color:var(--jp-ui-font-color2,#666)'><summary>"
                f"{len(self.unusable)} more strategies cannot run in this session</summary>"
                f"<ul style='margin:2px 0'>{rows}</ul></details>"
            )
        self.strategy_help.value = text

    def _on_train_started(self) -> None:
        with self._lock:
            self._loss = []
        self.loss_chart.set_series([])
        self._update_status()

    def _on_progress(self, progress: dict[str, Any]) -> None:
        if progress.get("state") != "training":
            self._update_status()
            return
        with self._lock:
            self._loss.append((progress["step"], progress["loss"]))
            points = list(self._loss)
        self.loss_chart.set_series(
            [{"name": "loss", "x": [p[0] for p in points], "y": [p[1] for p in points]}]
        )
        self._update_status()

    def _on_trained(self) -> None:
        self._update_status()
        self.error_box.value = ""

    def _on_failed(self, error: str) -> None:
        last = error.strip().splitlines()[-1] if error.strip() else "training failed"
        self.error_box.value = (
            f"<div style='color:#c62828'>Training failed: {html.escape(last)}</div>"
            f"<details><summary>traceback</summary><pre style='font-size:11px;white-space:pre-wrap'>"
            f"{html.escape(error)}</pre></details>"
        )
        self._update_status()

    def _update_curve(self) -> None:
        rows = [
            r
            for r in self.session.history
            if r["accuracy"] == r["accuracy"] and r["n_labels"] is not None
        ]
        rows.sort(key=lambda r: r["n_labels"])
        self.curve_chart.set_series(
            [
                {
                    "name": "accuracy",
                    "x": [r["n_labels"] for r in rows],
                    "y": [r["accuracy"] for r in rows],
                }
            ]
            if rows
            else []
        )

    def _update_status(self) -> None:
        status = self.session.status  # the one status the labeler's header reads too
        model = (
            "no model yet"
            if status["model_version"] is None
            else f"model v{status['model_version']} ({status['model_labels']} labels, "
            f"{status['staleness']} behind)"
        )
        lines = [
            f"device: {status['device']}",
            *([f"encoder {status['encoder_text']}"] if status["encoder"] else []),
            model,
            f"worker: {status['worker_text']}",
            f"{status['labeled']} labeled, round {status['round']}",
        ]
        self.status.value = "<br>".join(html.escape(x) for x in lines)
        self.stop_button.button_style = "warning" if status["worker"] == "training" else ""
        self.stop_button.disabled = status["worker"] != "training"

    def _update_stopping(self) -> None:
        signals = self.stop_monitor.signals()
        lines = signals.describe().splitlines()
        color = "#2e7d32" if signals.recommend_stop else "var(--jp-ui-font-color2,#666)"
        self.stopping.value = (
            "<div style='margin-top:6px'><b>When to stop</b></div>"
            + "".join(f"<div>{html.escape(x)}</div>" for x in lines[:-1])
            + f"<div style='color:{color}'>{html.escape(lines[-1])}</div>"
        )

    def _follow_cursor(self) -> None:
        sid = self.labeler.current_id
        if sid is not None:
            self.map.mark_current(sid)

    def close(self) -> None:
        """Close the App and its parts (the session stays open)."""
        self.quality.close()
        if self.team_panel is not None:
            self.team_panel.close()
        self.stop_monitor.close()
        self.map.close()
        self.labeler.close()
        super().close()
