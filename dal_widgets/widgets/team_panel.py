"""The team at a glance (in the App of a team session): who labeled how much and how fast,
how well they agree, what waits for adjudication and who trains.

The figures come from the server (a few queries and :func:`dal_widgets.agreement` over the
team's labels), so they are gathered on a thread of their own, at most once a second however
fast labels arrive, never in a widget callback.
"""

from __future__ import annotations

import html
import math
import threading
from typing import Any

from dal_widgets._checks import param_error
from dal_widgets.widgets._view import View

__all__ = ["TeamPanel", "team_html"]

_FG2 = "var(--jp-ui-font-color2,#666)"
_WARN = "var(--jp-warn-color1,#c62828)"
_CELL = "text-align:left;padding:0 8px 0 0;line-height:1.4"
_NUM = "text-align:right;padding:0 0 0 10px;line-height:1.4"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _kappa(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}"


def team_html(facts: dict[str, Any]) -> str:
    """The panel's HTML from :meth:`TeamPanel.facts` (every name escaped)."""
    agreement = facts["agreement"]
    by_who: dict[Any, list[float]] = {}
    if agreement is not None:
        for pair in agreement.pairs:
            if not math.isnan(pair["kappa"]):
                by_who.setdefault(pair["a"], []).append(pair["kappa"])
                by_who.setdefault(pair["b"], []).append(pair["kappa"])
    rows = "".join(
        f"<tr><td style='{_CELL}'>{_esc(r['annotator'])}"
        f"{' (you)' if r['annotator'] == facts['me'] else ''}</td>"
        f"<td style='{_NUM}'>{r['labels']}</td>"
        f"<td style='{_NUM}'>{r['per_minute']:g}</td>"
        f"<td style='{_NUM}'>"
        f"{_kappa(sum(k) / len(k) if (k := by_who.get(r['annotator'])) else None)}</td></tr>"
        for r in facts["stats"]
    )
    if agreement is None or agreement.n_items == 0:
        overall = "agreement: once items have two labels"
    else:
        overall = (
            f"Fleiss κ {_kappa(agreement.fleiss)} · Krippendorff α {_kappa(agreement.alpha)} "
            f"on {agreement.n_items} items with 2+ labels"
        )
    waiting = facts["disagreements"]
    wait = (
        f"<span style='color:{_WARN}'>{waiting} disagreement{'s' if waiting != 1 else ''} "
        "to adjudicate</span> (labeler: adjudicate())"
        if waiting
        else "no disagreement waits"
    )
    trainer = facts["trainer"]
    return (
        "<div class='dal-team-panel'><b>Team</b> "
        f"<span style='color:{_FG2}'>overlap {facts['overlap']}, rule {_esc(facts['rule'])}, "
        f"{facts['remaining']} items still need labels</span>"
        "<table style='border-collapse:collapse;margin:4px 0'><tr>"
        f"<th style='{_CELL}'>annotator</th><th style='{_NUM}'>labels</th>"
        f"<th style='{_NUM}'>per min</th>"
        f"<th style='{_NUM}' title=\"mean Cohen's kappa with the others\">κ</th></tr>"
        f"{rows}</table>"
        f"<div style='color:{_FG2}'>{_esc(overall)}</div><div>{wait}</div>"
        f"<div style='color:{_FG2}'>trains: {_esc(trainer or 'no one (a session takes over)')}"
        "</div></div>"
    )


class TeamPanel(View):
    """Per-annotator counts, pace and agreement of a team session (``Session(team=...)``),
    redrawn after labels (others' too) on a thread of its own.

    Parameters
    ----------
    session : Session
        A team session.
    """

    #: The shortest time between two redraws, in seconds.
    every = 1.0

    def __init__(self, session: Any) -> None:
        import ipywidgets as W

        if getattr(session, "team", None) is None:
            raise param_error("session", "TeamPanel", "a team Session (team=...)", session)
        super().__init__()
        self.session = session
        self.widget = W.HTML(layout=W.Layout(width="100%", min_width="0"))
        self.widget.add_class("dal-team")
        self._drawn = ""
        self._due = threading.Event()
        self._closed = threading.Event()
        self._unsubscribe += [
            session.on(event, lambda **kw: self._due.set()) for event in ("labeled", "undone")
        ]
        self._thread = threading.Thread(target=self._run, name="dal-team-panel", daemon=True)
        self._due.set()
        self._thread.start()

    def facts(self) -> dict[str, Any]:
        """What the panel shows, read from the server (not in a widget callback)."""
        from dal_widgets.interrater import agreement

        team = self.session.team
        labels = team.queue.labels()
        return {
            "me": self.session.store.annotator,
            "overlap": team.team.overlap,
            "rule": team.team.rule,
            "stats": team.queue.stats(),
            "agreement": agreement(labels) if labels else None,
            "disagreements": len(team.queue.disagreements()),
            "remaining": team.queue.remaining(),
            "trainer": team.trainer_name(),
        }

    def refresh(self) -> None:
        """Gather and draw now (in the calling thread)."""
        self._drawn = team_html(self.facts())
        self.widget.value = self._drawn

    def _show_error(self, exc: Exception) -> None:
        note = html.escape(f"The team panel could not refresh: {type(exc).__name__}: {exc}")
        self.widget.value = f"<div style='color:{_WARN}'>{note}</div>{self._drawn}"

    def _run(self) -> None:
        while not self._closed.is_set() and not self.session.store.closed:
            if not self._due.wait(0.5):
                continue
            self._due.clear()
            self._safe(self.refresh)
            self._closed.wait(self.every)

    def close(self) -> None:
        self._closed.set()
        super().close()
