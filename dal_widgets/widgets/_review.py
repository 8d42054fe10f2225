"""The labeler's paged review: which samples a review shows, in which order, a page at a time.

:func:`select_given` and :func:`select_labeled` check a review request and choose its samples
from the session (grouped by class, least sure first, or the model's surest disagreements
first); :class:`Review` is the open review's state and the texts the view shows for it, and
:class:`Reviews` keeps it with the query batch it replaced. The widget owns the screen and
calls these; nothing here touches a widget.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from dal_widgets._checks import check_choice, param_error

__all__ = [
    "Review",
    "Reviews",
    "Selection",
    "arranged",
    "disagreements",
    "model_probs",
    "review_order",
    "select_given",
    "select_labeled",
]


class Selection(NamedTuple):
    """The samples of a review request, in review order, with what the view says of them."""

    ids: list[Any]
    title: str  # where they come from ("from the map"); untrusted, shown through textContent
    how: str  # how they are ordered


@dataclasses.dataclass
class Review:
    """An open review: samples in review order, shown ``size`` tiles a page."""

    ids: list[Any]
    title: str  # e.g. "from the map"; untrusted text, the view shows it through textContent
    how: str  # how the samples are ordered, for the message
    size: int
    relabel: bool  # of labeled samples: the cursor walks every tile, not only pending ones
    token: int  # one per review opened, so the view takes the keyboard focus once
    page: int = 0
    #: An adjudication review: who gave which label, per sample id (a class key decides).
    votes: dict[Any, str] | None = None

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.ids) // self.size))

    def page_ids(self) -> list[Any]:
        return self.ids[self.page * self.size : (self.page + 1) * self.size]

    def page_of(self, sample_id: Any) -> int | None:
        try:
            return self.ids.index(sample_id) // self.size
        except ValueError:
            return None

    def summary(self) -> dict[str, Any]:
        """``title``, ``page`` (counted from 1), ``pages`` and ``n`` samples."""
        return {"title": self.title, "page": self.page + 1, "pages": self.pages, "n": len(self.ids)}

    def info(self) -> dict[str, Any]:
        """What the view draws of the review: the summary, ``how``, ``relabel`` and ``token``."""
        return {
            **self.summary(),
            "how": self.how,
            "relabel": self.relabel,
            "token": self.token,
            "adjudicate": self.votes is not None,
        }

    def message(self, lead: str = "", *, model: bool) -> str:
        """What the review shows, and its keys (the footer); ``model``: one is trained."""
        n = len(self.ids)
        what = f"Review: {n} sample{'s' if n != 1 else ''}" + (
            f" {self.title}" if self.title else ""
        )
        if self.votes is not None:
            keys = "a class key decides, N/P pages, B back to the batch"
        elif self.relabel:
            keys = "a class key relabels, N/P pages, B back to the batch"
        else:
            accept = ", Shift+Enter accepts the page" if model else ""
            keys = f"N/P pages{accept}, B back to the batch"
        page = f"page {self.page + 1}/{self.pages}"
        return " · ".join(x for x in (lead, what, page, self.how, keys) if x)

    def page_done_message(self, done: set[Any]) -> str:
        """What to do once no tile of the page is pending; ``done``: labeled or skipped ids."""
        if all(i in done for i in self.ids):
            return f"All {len(self.ids)} samples of this review are done: B back to the batch."
        if self.page + 1 < self.pages:
            return f"Page {self.page + 1}/{self.pages} done: N for the next page."
        return f"Page {self.page + 1}/{self.pages} done: P goes back, N or B back to the batch."


class Reviews:
    """The open review (``current``, None while the query batch is shown), and the query batch
    it replaced (``batch``), shown again when it ends."""

    def __init__(self) -> None:
        self.current: Review | None = None
        self.batch: list[Any] = []
        self._opened = 0

    def start(
        self,
        chosen: Selection,
        size: int,
        *,
        relabel: bool,
        on_screen: list[Any],
        votes: dict[Any, str] | None = None,
    ) -> Review:
        """Open a review of ``chosen``, ``size`` tiles a page, in place of ``on_screen`` (a
        review opened from a review goes back to the same batch); ``votes``: an adjudication
        review, with who gave which label per id."""
        if self.current is None:
            self.batch = on_screen
        self._opened += 1
        self.current = Review(
            chosen.ids,
            chosen.title,
            chosen.how,
            size,
            relabel=relabel,
            token=self._opened,
            votes=votes,
        )
        return self.current

    def end(self) -> list[Any]:
        """Close the review; returns the batch it replaced."""
        back, self.current, self.batch = self.batch, None, []
        return back

    def required(self, where: str) -> Review:
        """The open review; a ValueError when none is open."""
        if self.current is None:
            raise ValueError(f"{where}: no review is open; call review(ids) first.")
        return self.current


def review_order(probs: np.ndarray | None, groups: np.ndarray) -> np.ndarray:
    """Positions in review order: by group (ascending), then least sure first (``probs`` is
    the model's confidence in each sample's group; None keeps the given order in a group)."""
    if probs is None:
        return np.argsort(groups, kind="stable")
    return np.lexsort((probs, groups))  # stable: ties keep the given order


def model_probs(session: Any, ids: list[Any]) -> np.ndarray | None:
    """The newest model's probabilities for ``ids`` (None before the first model)."""
    if session.model is None:
        return None
    return np.asarray(session.predict_proba(ids), dtype=np.float64)


def arranged(
    ids: list[Any],
    probs: np.ndarray | None,
    classes: list[str],
    *,
    multi_label: bool,
    labels: list[Any] | None = None,
) -> list[Any]:
    """``ids`` grouped by class, least sure first: the class is the label where one is
    given, else the model's suggestion; "sure" is the model's probability of that class
    (multi-label: of that set of classes). Without a model: by label, else as given."""
    index = {c: k for k, c in enumerate(classes)}
    n, width = len(ids), len(classes)
    given: list[Any] = labels if labels is not None else [None] * n
    known = np.array([lab is not None for lab in given], dtype=bool)
    if multi_label:
        hot = np.zeros((n, width), dtype=bool)
        for row in np.flatnonzero(known):
            hot[row, [index[c] for c in given[row]]] = True
        sure = None
        if probs is not None:
            p = np.zeros((n, width))
            p[:, : probs.shape[1]] = probs[:, :width]
            hot[~known] = p[~known] >= 0.5
            sure = np.where(hot, p, 1.0 - p).min(axis=1)
        groups = np.unique(hot, axis=0, return_inverse=True)[1].reshape(-1)
        if probs is None:
            groups[~known] = groups.max() + 1  # neither label nor suggestion: last
    else:
        groups = np.full(n, width)  # neither label nor suggestion: last
        for row in np.flatnonzero(known):
            groups[row] = index[given[row]]
        sure = None
        if probs is not None:
            groups[~known] = probs[~known].argmax(axis=1)
            inside = groups < probs.shape[1]  # a class added after the model: prob 0
            sure = np.zeros(n)
            sure[inside] = probs[np.flatnonzero(inside), groups[inside]]
    return [ids[i] for i in review_order(sure, groups)]


def disagreements(
    ids: list[Any], labels: list[Any], probs: np.ndarray, classes: list[str], *, multi_label: bool
) -> list[Any]:
    """The ids whose label the model (``probs``) predicts otherwise, its surest first."""
    if multi_label:
        index = {c: k for k, c in enumerate(classes)}
        hot = np.zeros((len(ids), probs.shape[1]), dtype=bool)
        for row, lab in enumerate(labels):
            hot[row, [index[c] for c in lab if index[c] < probs.shape[1]]] = True
        predicted = probs >= 0.5
        differs = (predicted != hot).any(axis=1)
        sure = np.where(predicted, probs, 1.0 - probs).min(axis=1)
    else:
        names = np.asarray(classes[: probs.shape[1]], dtype=object)
        predicted_names = names[probs.argmax(axis=1)]
        differs = predicted_names != np.asarray(labels, dtype=object)
        sure = probs.max(axis=1)
    rows = np.flatnonzero(differs)
    rows = rows[np.argsort(-sure[rows], kind="stable")]
    return [ids[i] for i in rows]


def select_given(session: Any, ids: Any, *, order: str, title: str | None, where: str) -> Selection:
    """The samples of ``LabelingWidget.review(ids, order=..., title=...)``, checked and in
    review order: ``"prediction"`` groups them by the model's suggestion, least sure first."""
    check_choice(order, "order", where, ["prediction", "given"])
    if title is not None and not isinstance(title, str):
        raise param_error("title", where, "a str or None", title, TypeError)
    chosen = list(dict.fromkeys(session.sample_ids(ids, where=where)))
    if order == "given":
        how = "in the given order"
    elif session.model is None:
        how = "in the given order (no model yet)"
    else:
        probs = model_probs(session, chosen)
        chosen = arranged(chosen, probs, session.classes, multi_label=session.multi_label)
        how = "grouped by suggestion, least sure first"
    return Selection(chosen, title or "", how)


def select_labeled(
    session: Any,
    *,
    label: str | None,
    annotator: str | None,
    disagree: bool,
    skipped: bool,
    flagged: bool,
    where: str,
) -> Selection:
    """The samples of ``LabelingWidget.review_labeled(...)``: every filter must hold (none:
    every labeled sample); grouped by label, least sure first, or the surest disagreements
    first. Raises when the filters are malformed or match no sample."""
    s = session
    if label is not None:
        check_choice(label, "label", where, s.classes)
    if annotator is not None and not isinstance(annotator, str):
        raise param_error("annotator", where, "a str (a name)", annotator, TypeError)
    for name, value in (("disagree", disagree), ("skipped", skipped), ("flagged", flagged)):
        if not isinstance(value, (bool, np.bool_)):
            raise param_error(name, where, "a bool", value, TypeError)
    if disagree and s.model is None:
        raise ValueError(
            f"The 'disagree' parameter of {where} needs a trained model to compare "
            "the labels with. Got True before the first model; call session.train()."
        )
    labels = s.labels
    by_label = label is not None or annotator is not None or disagree
    if skipped or flagged:
        marks = [s.store.marked(f) for f, on in (("skip", skipped), ("flag", flagged)) if on]
        chosen = sorted(set.intersection(*marks), key=str)
        if chosen:  # in pool order
            chosen = [chosen[i] for i in np.argsort(s.dataset.positions(chosen))]
        if by_label:
            chosen = [i for i in chosen if i in labels]
    else:
        chosen = list(labels)
    if annotator is not None:
        records = s.store.records()
        names = sorted({r["annotator"] for r in records if isinstance(r["annotator"], str)})
        if names:
            check_choice(annotator, "annotator", where, names)
        gave = {r["sample_id"] for r in records if r["annotator"] == annotator}
        chosen = [i for i in chosen if i in gave]
    if label is not None:
        chosen = [
            i for i in chosen if (label in labels[i] if s.multi_label else labels[i] == label)
        ]
    how = ""
    if disagree and chosen:
        probs = model_probs(s, chosen)
        assert probs is not None  # checked above
        given = [labels[i] for i in chosen]
        chosen = disagreements(chosen, given, probs, s.classes, multi_label=s.multi_label)
        how = "the model's most confident disagreements first"
    elif chosen:
        how = "grouped by label" + (", least sure first" if s.model is not None else "")
        probs = model_probs(s, chosen)
        given = [labels.get(i) for i in chosen]
        chosen = arranged(chosen, probs, s.classes, multi_label=s.multi_label, labels=given)
    if not chosen:
        asked = {"label": label, "annotator": annotator, "disagree": disagree}
        asked |= {"skipped": skipped, "flagged": flagged}
        text = ", ".join(f"{k}={v!r}" for k, v in asked.items() if v not in (None, False))
        raise ValueError(
            f"The filters of {where} must match at least one sample. Got "
            f"{text or 'none'}, which match none ({len(labels)} labeled, "
            f"{len(s.store.marked('skip'))} skipped, {len(s.store.marked('flag'))} "
            "flagged)."
        )
    marks_text = " and ".join(n for n, on in (("skipped", skipped), ("flagged", flagged)) if on)
    parts = [marks_text] if marks_text else []
    if label is not None:
        parts.append(f"labeled {label}")
    elif not parts:
        parts.append("labeled")
    if annotator is not None:
        parts.append(f"by {annotator}")
    if disagree:
        parts.append("where the model disagrees")
    return Selection(chosen, " ".join(parts), how)
