"""The labeler's tiles, computed from the session: what each shows, its status, where the
cursor goes next, and the progress line. Plain functions over the session and the tile dicts;
the widget publishes what they return.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dal_widgets._checks import short_repr
from dal_widgets.widgets._renderers import payload

__all__ = [
    "accepted_message",
    "next_pending",
    "pending",
    "progress_line",
    "resolve",
    "suggested",
    "tile_key",
    "tile_states",
    "tiles",
    "with_suggestions",
]

_WHY = ("probs", "prob", "score", "rank", "candidates", "strategy")


def tile_key(sample_id: Any) -> str:
    """The key of a sample's tile (the view's keys are strings)."""
    return str(sample_id)


def _why(explained: dict[str, Any]) -> dict[str, Any]:
    """A tile's suggestion and "why this sample" fields, from one ``Session.explain`` row."""
    return {"suggestion": explained.get("predicted"), **{k: explained.get(k) for k in _WHY}}


def resolve(
    session: Any,
    sample_id: Any,
    items: list[dict[str, Any]],
    cursor: int,
    on_screen: dict[str, Any],
    where: str,
) -> Any:
    """The sample id to act on: the given one, or the one under the cursor."""
    if sample_id is None:
        if not items:
            raise ValueError(f"{where}: there is no sample on screen; call next_batch() first.")
        return on_screen[items[cursor]["key"]]
    key = tile_key(sample_id)
    if key in on_screen:
        return on_screen[key]
    session.dataset.positions([sample_id], where=where)  # KeyError for unknown ids
    return session.dataset.python_id(sample_id)


def tiles(session: Any, ids: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tiles of ``ids`` (rendered, with the model's suggestions), and key -> sample id."""
    ds = session.dataset
    explain = {r["id"]: r for r in session.explain(ids)} if ids else {}
    items: list[dict[str, Any]] = []
    keys = {}
    for sid in ids:
        key = tile_key(sid)
        keys[key] = sid
        items.append({"key": key, "sample": payload(ds, sid), **_why(explain.get(sid, {}))})
    return keys, items


def with_suggestions(
    session: Any, items: list[dict[str, Any]], on_screen: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """``items`` with the newest model's suggestions and "why" notes (None: no tile)."""
    ids = [on_screen[it["key"]] for it in items if it["key"] in on_screen]
    if not ids:
        return None
    explain = {r["id"]: r for r in session.explain(ids)}
    return [{**it, **_why(explain.get(on_screen[it["key"]], {}))} for it in items]


def tile_states(
    session: Any,
    ids: Iterable[Any],
    on_screen: dict[str, Any],
    states: dict[str, Any],
    *,
    decided: bool = False,
) -> dict[str, Any]:
    """``states`` with the committed status of the ``ids`` on screen read from the session
    (``decided``: an adjudication, done once the team's training label exists)."""
    labels = session.labels if decided else session.done_labels  # a team's: one's own
    skipped = session.store.marked("skip")
    flagged = session.store.marked("flag")
    states = dict(states)
    for sid in ids:
        key = tile_key(sid)
        if key not in on_screen:
            continue
        status = "done" if sid in labels else "skipped" if sid in skipped else "pending"
        states[key] = {"status": status, "label": labels.get(sid), "flagged": sid in flagged}
    return states


def pending(items: list[dict[str, Any]], states: dict[str, Any]) -> list[int]:
    """The positions of the pending tiles."""
    return [i for i, it in enumerate(items) if states.get(it["key"], {}).get("status") == "pending"]


def next_pending(positions: list[int], cursor: int) -> int:
    """The first of the (non-empty) pending ``positions`` after ``cursor``, else the first."""
    after = [i for i in positions if i > cursor]
    return after[0] if after else positions[0]


def suggested(
    items: list[dict[str, Any]],
    states: dict[str, Any],
    on_screen: dict[str, Any],
    sample_ids: Iterable[Any] | None,
    where: str,
) -> tuple[list[Any], list[Any]]:
    """The pending tiles with a suggestion (only those of ``sample_ids``, which must be on
    screen, when given), as ids and suggestions."""
    only = None
    if sample_ids is not None:
        only = {tile_key(i) for i in sample_ids}
        unknown = sorted(only - set(on_screen))
        if unknown:
            raise KeyError(f"{where}: samples {short_repr(unknown)} are not on screen.")
    ids, labels = [], []
    for it in items:
        key = it["key"]
        if it.get("suggestion") is None or (only is not None and key not in only):
            continue
        if states.get(key, {}).get("status") == "pending":
            ids.append(on_screen[key])
            labels.append(it["suggestion"])
    return ids, labels


def accepted_message(n: int, *, paging: bool) -> str:
    """What the footer says after accepting ``n`` suggestions of a review page or a batch."""
    where_text = "this page" if paging else "this batch"
    turn = "N next page" if paging else "N next batch"
    return (
        f"Accepted {n} suggestion{'s' if n != 1 else ''} on "
        f"{where_text} (Backspace undoes them) · {turn}."
    )


def progress_line(
    status: dict[str, Any], times: Iterable[float], budget: int | None, now: float
) -> dict[str, Any]:
    """The progress line from ``Session.status``, the label ``times`` and the budget."""
    recent = [t for t in times if now - t <= 300]
    per_minute = 0.0
    if len(recent) >= 2:
        # at least a 30 s window, so a burst of fast key presses does not read as thousands
        per_minute = 60.0 * len(recent) / max(now - recent[0], 30.0)
    return {
        **{k: status[k] for k in ("labeled", "model_version", "staleness", "round")},
        **{k: status[k] for k in ("strategy", "worker", "worker_text", "train_error")},
        "team": status.get("team"),
        "training": status["worker"] == "training",
        # An encoder that pretrains or embeds: its progress, in the header meanwhile.
        "encoder_note": status.get("encoder_progress"),
        "budget": budget,
        "per_minute": round(per_minute, 1),
    }
