"""Strategy comparison: simulated oracles in a background thread, live learning curves."""

from __future__ import annotations

import html
import threading
from typing import Any

from dal_widgets._checks import param_error
from dal_widgets._threads import start_daemon
from dal_widgets.widgets._view import View

__all__ = ["CompareWidget"]


class CompareWidget(View):
    """Run :func:`dal_widgets.simulate` in the background and watch the curves grow.

    Parameters are those of :func:`~dal_widgets.simulate`; ``autostart`` runs at once.
    Public methods: :meth:`run`, :meth:`stop`, :meth:`wait`; the result is ``.result``
    (a :class:`~dal_widgets.simulation.SimulationResult`, partial while running).
    """

    def __init__(
        self,
        dataset: Any,
        strategies: Any = ("random", "entropy"),
        *,
        autostart: bool = True,
        **simulate_kwargs: Any,
    ) -> None:
        import ipywidgets as W

        from dal_widgets.data import Dataset
        from dal_widgets.simulation import SimulationResult
        from dal_widgets.widgets.chart import LineChart

        if not isinstance(dataset, Dataset):
            raise param_error(
                "dataset",
                "CompareWidget",
                "a Dataset from dal_widgets.datasets",
                dataset,
                TypeError,
            )
        super().__init__()
        self.dataset = dataset
        names = [strategies] if isinstance(strategies, str) else list(strategies)
        baseline = simulate_kwargs.get("baseline", "random")
        if baseline is not None and names and baseline not in names:
            names = [baseline, *names]  # what simulate runs: the baseline arm too
        self.strategies = names
        self.kwargs = simulate_kwargs
        self.result = SimulationResult()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._total = 0
        self._failure = ""
        self.chart = LineChart(
            title="Held-out accuracy (mean over seeds, quartile band)",
            xlabel="labels",
            empty="running the first fits…",
        )
        self.progress = W.IntProgress(value=0, min=0, max=1, description="rounds")
        self.status = W.HTML()
        #: Cells (strategy, seed) done, running and failed: where they run (an executor) or
        #: come from (a results file) shows here.
        self.cells = W.HTML()
        self.table = W.HTML()
        self.run_button = W.Button(description="Run", icon="play")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="warning")
        self.run_button.on_click(lambda _b: self.run())
        self.stop_button.on_click(lambda _b: self.stop())
        self.widget = W.VBox(
            [
                W.HBox([self.run_button, self.stop_button, self.progress, self.status]),
                self.cells,
                self.chart,
                self.table,
            ]
        )
        self.widget.add_class("dal-compare")
        if autostart:
            self.run()

    def _show_error(self, exc: Exception) -> None:
        self.status.value = (
            f"<span style='color:#c62828'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>"
        )

    def _rounds_total(self) -> int:
        initial = int(self.kwargs.get("initial", 20))
        batch = int(self.kwargs.get("batch", 10))
        budget = int(self.kwargs.get("budget", 120))
        seeds = self.kwargs.get("seeds", 3)  # simulate's default
        n_seeds = seeds if isinstance(seeds, int) else len(list(seeds))
        per_run = 1 + -(-(budget - initial) // batch)
        return per_run * n_seeds * len(self.strategies)

    def run(self) -> None:
        """Start (or restart) the comparison in a background thread."""
        from dal_widgets.simulation import SimulationResult

        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.result = SimulationResult()
        self.error = None
        self._total = self._rounds_total()
        self.progress.max = max(self._total, 1)
        self.progress.value = 0
        self.status.value = "starting…"
        self.cells.value = ""
        self._failure = ""
        self._thread = start_daemon(self._work, name="dal-compare", on_error=self._failed)

    def stop(self) -> None:
        """End after the current round; the curves keep what finished."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends; False on timeout."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        from dal_widgets.simulation import simulate

        kwargs = dict(self.kwargs)
        user_on_cell = kwargs.pop("on_cell", None)

        def on_cell(event: dict[str, Any]) -> None:
            self._on_cell(event)
            if user_on_cell is not None:
                user_on_cell(event)

        # on_cell given: failed cells are shown here, and simulate does not warn.
        res = simulate(
            self.dataset,
            self.strategies,
            progress=self._on_record,
            stop=self._stop,
            on_cell=on_cell,
            **kwargs,
        )
        self.result = res
        self._draw(final=True)
        seeds = len({r["seed"] for r in res.records})
        caveat = (
            " · one seed: a difference between strategies may be chance (run seeds=5 or more)"
            if seeds == 1
            else f" · {seeds} seeds"
        )
        self.status.value = html.escape(("stopped" if self._stop.is_set() else "done") + caveat)
        for failure in res.failures:
            self.errors.append(f"{failure['strategy']} seed {failure['seed']}:\n{failure['error']}")

    def _failed(self, exc: Exception, text: str) -> None:
        """The run failed in its thread: kept in ``error`` / ``errors`` and shown, not printed."""
        self.error = text
        self.errors.append(text)
        self._show_error(exc)

    def _on_cell(self, event: dict[str, Any]) -> None:
        """Counts of cells; a failed one names its strategy, seed and error line."""
        from dal_widgets._grid import error_line

        parts = [f"cells: {event['done']} of {event['total']} done"]
        if event["resumed"]:
            parts.append(f"{event['resumed']} from the results file")
        parts.append(f"{event['running']} running")
        if event["failed"]:
            parts.append(f"{event['failed']} failed")
        text = html.escape(" · ".join(parts))
        if event["state"] == "failed":
            line = error_line(event.get("error"))
            self._failure = f"{event['strategy']} seed {event['seed']} failed: {line}"
        if self._failure:
            text += f"<br><span style='color:#c62828'>{html.escape(self._failure)}</span>"
        self.cells.value = text

    def _on_record(self, record: dict[str, Any]) -> None:
        self.result.records.append(record)
        self.progress.value = min(len(self.result.records), self.progress.max)
        self.status.value = html.escape(
            f"{record['strategy']} seed {record['seed']}: {record['labels']} labels, accuracy {record['accuracy']:.3f}"
        )
        self._draw(final=False)

    def _draw(self, *, final: bool) -> None:
        res = self.result
        series = []
        for name in res.strategies:
            c = res.curve(name)
            series.append(
                {
                    "name": name,
                    "x": c["labels"],
                    "y": c["mean"],
                    "band_lo": c["q25"],
                    "band_hi": c["q75"],
                }
            )
        self.chart.set_series(series)
        self.chart.y_range = _fitted_range(series)
        if final and res.records:
            self.table.value = "<pre style='font-size:12px'>" + html.escape(res.table()) + "</pre>"


def _fitted_range(series: list[dict[str, Any]]) -> list[float]:
    """A y range that fits the curves and bands (with a margin), inside [0, 1]: curves
    between 0.77 and 0.93 must not look flat on a 0-1 axis."""
    import numpy as np

    values = [
        np.asarray(s[k], dtype=np.float64)
        for s in series
        for k in ("y", "band_lo", "band_hi")
        if s.get(k) is not None and len(s[k])
    ]
    if not values:
        return [0.0, 1.0]
    flat = np.concatenate(values)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return [0.0, 1.0]
    lo, hi = float(flat.min()), float(flat.max())
    pad = max(0.02, 0.1 * (hi - lo))
    return [max(0.0, lo - pad), min(1.0, hi + pad)]
