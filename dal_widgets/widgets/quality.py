"""Counts and quality at a glance: progress, labels per class, held-out accuracy per class and
the confusion matrix of the newest evaluation.

:func:`quality_html` draws from ``session.labels`` and ``session.evaluation`` only (no
inference), so :class:`QualityPanel` can redraw on every label.
"""

from __future__ import annotations

import html
import itertools
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dal_widgets._checks import check_int, param_error
from dal_widgets.widgets._view import View

__all__ = ["QualityPanel", "quality_html"]

#: Confusion matrices of more classes show only the largest ones (by held-out support).
MAX_MATRIX_CLASSES = 12

_FG = "var(--jp-ui-font-color1,#222)"
_FG2 = "var(--jp-ui-font-color2,#666)"
_TRACK = "var(--jp-layout-color3,#ddd)"
_BAR = "var(--jp-brand-color1,#1976d2)"
_BORDER = "var(--jp-border-color2,#ccc)"
# Semi-transparent tints read on light and dark backgrounds alike.
_HIT = "46,125,50"  # diagonal (correct), green
_MISS = "198,40,40"  # off-diagonal (confused), red


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _bar(fraction: float, height: int) -> str:
    width = f"{100 * min(max(fraction, 0.0), 1.0):.1f}%"
    return (
        f"<div style='background:{_TRACK};height:{height}px;border-radius:{height // 2}px;"
        f"overflow:hidden'><div style='background:{_BAR};width:{width};height:100%'></div></div>"
    )


def _progress(n_labeled: int, pool: int, budget: int | None) -> str:
    if budget is not None:
        left = budget - n_labeled
        note = "budget reached" if left <= 0 else f"{left} to go"
        text = (
            f"<b>{n_labeled} / {budget}</b> labeled of the budget "
            f"({_pct(n_labeled / budget)}, {note})"
        )
        fraction = n_labeled / budget
    else:
        fraction = n_labeled / pool if pool else 0.0
        text = (
            f"<b>{n_labeled} / {pool}</b> of the pool labeled "
            f"({100 * fraction:.1f}% of the pool; no budget set)"
        )
    return f"<div class='dal-quality-progress'>{text}{_bar(fraction, 8)}</div>"


def _label_counts(labels: dict[Any, Any], multi_label: bool) -> Counter[Any]:
    values = labels.values()
    # A multi-label sample counts once in each of its classes.
    return Counter(itertools.chain.from_iterable(values) if multi_label else values)


def _class_table(
    classes: Sequence[str],
    counts: Counter[Any],
    scores: Sequence[float | None] | None,
    score_name: str,
) -> str:
    top = max(counts.values(), default=0)
    head = "<th style='text-align:left'>class</th><th colspan='2'>labels</th>"
    if scores is not None:
        head += f"<th title='on the held-out split'>{_esc(score_name)}</th>"
    rows = []
    for i, name in enumerate(classes):
        n = counts.get(name, 0)
        row = (
            f"<td style='max-width:140px;overflow:hidden;text-overflow:ellipsis;"
            f"white-space:nowrap' title='{_esc(name)}'>{_esc(name)}</td>"
            f"<td style='text-align:right;padding-right:4px'>{n}</td>"
            f"<td style='width:40%;min-width:40px'>{_bar(n / top if top else 0.0, 6)}</td>"
        )
        if scores is not None:
            score = scores[i] if i < len(scores) else None
            cell = (
                f"<span style='color:{_FG2}' title='no held-out sample of this class, "
                "or not in the evaluated model'>–</span>"
                if score is None
                else _pct(score)
            )
            row += f"<td style='text-align:right'>{cell}</td>"
        rows.append(f"<tr>{row}</tr>")
    return (
        "<div style='max-height:220px;overflow-y:auto;margin-top:6px'>"
        "<table class='dal-quality-counts' style='border-collapse:collapse;width:100%;"
        "color:inherit;font-size:inherit'>"
        f"<thead><tr style='color:{_FG2}'>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _confusion_table(classes: Sequence[str], confusion: list[list[int]]) -> str:
    n = len(confusion)
    names = [classes[i] if i < len(classes) else f"class {i}" for i in range(n)]
    support = [sum(row) for row in confusion]
    shown = list(range(n))
    if n > MAX_MATRIX_CLASSES:
        largest = sorted(shown, key=lambda i: (-support[i], i))[:MAX_MATRIX_CLASSES]
        shown = sorted(largest)
    cell_style = f"border:1px solid {_BORDER};padding:1px 4px;text-align:right;min-width:18px"
    # Short names (digits) head the columns themselves; long ones are numbered, rows say which.
    short = all(len(names[j]) <= 3 for j in shown)
    head = "".join(
        f"<th style='font-weight:normal;color:{_FG2}' title='predicted {_esc(names[j])}'>"
        f"{_esc(names[j]) if short else k}</th>"
        for k, j in enumerate(shown)
    )
    rows = []
    for k, i in enumerate(shown):
        peak = max(max(confusion[i][j] for j in shown), 1)
        cells = []
        for j in shown:
            v = confusion[i][j]
            alpha = 0.0 if v == 0 else 0.15 + 0.55 * v / peak
            rgb = _HIT if i == j else _MISS
            extra = "font-weight:bold;outline:1px solid rgba(46,125,50,0.9);" if i == j else ""
            cells.append(
                f"<td style='{cell_style};background:rgba({rgb},{alpha:.2f});{extra}' "
                f"title='true {_esc(names[i])}, predicted {_esc(names[j])}: {v}'>{v}</td>"
            )
        rows.append(
            f"<tr><th style='text-align:left;font-weight:normal;max-width:120px;overflow:hidden;"
            f"text-overflow:ellipsis;white-space:nowrap' title='{_esc(names[i])}'>"
            f"{'' if short else f'{k} '}{_esc(names[i])}</th>{''.join(cells)}</tr>"
        )
    if len(shown) < n:
        summary = f"Confusion matrix ({len(shown)} largest of {n} classes)"
        state = ""  # many classes: collapsed until asked for
    else:
        summary = "Confusion matrix"
        state = " open"
    return (
        f"<details{state} style='margin-top:6px'><summary style='cursor:pointer'>{summary}"
        f"<span style='color:{_FG2}'> · rows true, columns predicted</span></summary>"
        "<div style='overflow-x:auto'>"
        "<table class='dal-quality-confusion' style='border-collapse:collapse;margin-top:4px;"
        "color:inherit;font-size:inherit'>"
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "</div></details>"
    )


def quality_html(session: Any, *, budget: int | None = None) -> str:
    """Progress, labels per class and (after an evaluation) held-out quality, as HTML.

    Reads ``session.labels`` and ``session.evaluation`` only: no inference, cheap enough to
    redraw on every label. Class names are escaped.

    Parameters
    ----------
    session : Session
    budget : int, optional
        The progress bar shows labeled / budget; without one, labeled / pool size.

    Returns
    -------
    str
        An HTML fragment whose root element has CSS class ``dal-quality``.
    """
    if budget is not None:
        budget = check_int(budget, "budget", "quality_html", lo=1)
    labels = session.labels
    classes = list(session.classes)
    multi_label = bool(session.multi_label)
    evaluation = session.evaluation
    counts = _label_counts(labels, multi_label)

    parts = [_progress(len(labels), len(session.dataset), budget)]
    scores: Sequence[float | None] | None = None
    score_name = "F1" if multi_label else "accuracy"
    if evaluation is not None:
        scores = evaluation.get("per_class_f1" if multi_label else "per_class_accuracy")
    parts.append(_class_table(classes, counts, scores, score_name))
    if multi_label:
        parts.append(
            f"<div style='color:{_FG2}'>A sample with several classes counts in each.</div>"
        )
    if evaluation is None:
        if session.dataset.has_holdout:
            note = (
                "Per-class accuracy and the confusion matrix appear after the first fit, "
                "on the held-out split."
            )
        else:
            note = (
                "This dataset has no held-out split, so there is no per-class accuracy or "
                "confusion matrix (load it with holdout=0.2 to get them)."
            )
        parts.append(f"<div style='color:{_FG2};margin-top:6px'>{note}</div>")
    else:
        metric = evaluation.get("metric", "accuracy")
        title = (
            f"Held-out {_esc(metric)} {_pct(evaluation['accuracy'])}"
            f" · model v{_esc(evaluation.get('model_version', '?'))}"
            f" · {_esc(evaluation.get('n_labels', '?'))} labels"
        )
        if "n_eval" in evaluation:
            title += f" · {_esc(evaluation['n_eval'])} held-out samples"
        parts.insert(1, f"<div style='margin-top:6px'><b>{title}</b></div>")
        confusion = evaluation.get("confusion")
        if confusion:
            parts.append(_confusion_table(classes, confusion))
    return (
        f"<div class='dal-quality' style='color:{_FG};font-size:12px;"
        f"font-family:var(--jp-ui-font-family,sans-serif);max-width:100%'>{''.join(parts)}</div>"
    )


class QualityPanel(View):
    """:func:`quality_html` of a session, redrawn when labels or evaluations change.

    Parameters
    ----------
    session : Session
    budget : int, optional
        The progress bar shows labeled / budget; without one, labeled / pool size.

    Notes
    -----
    Redraws on the session events ``labeled``, ``undone``, ``evaluated`` and ``class_added``
    (some arrive on the training thread; the widget's value may change there). A failed
    redraw is kept in ``errors`` and shown above the last good drawing.
    """

    def __init__(self, session: Any, *, budget: int | None = None) -> None:
        import ipywidgets as W

        from dal_widgets.session import Session

        if not isinstance(session, Session):
            raise param_error(
                "session", "QualityPanel", "a dal_widgets.Session", session, TypeError
            )
        super().__init__()
        self.session = session
        self.budget = None if budget is None else check_int(budget, "budget", "QualityPanel", lo=1)
        self._lock = threading.Lock()
        self._drawn = ""
        self.widget = W.HTML(layout=W.Layout(width="100%", min_width="0"))
        self.widget.add_class("dal-quality-panel")
        self._unsubscribe += [
            session.on(event, lambda **kw: self._safe(self.refresh))
            for event in ("labeled", "undone", "evaluated", "class_added")
        ]
        self._safe(self.refresh)

    def refresh(self) -> None:
        """Redraw from the session's labels and newest evaluation."""
        # Drawn and set under one lock: a redraw from the training thread cannot overwrite a
        # newer one from the kernel thread with older counts.
        with self._lock:
            self._drawn = quality_html(self.session, budget=self.budget)
            self.widget.value = self._drawn

    def _show_error(self, exc: Exception) -> None:
        message = _esc(f"{type(exc).__name__}: {exc}")
        self.widget.value = f"<div style='color:#c62828'>{message}</div>{self._drawn}"
