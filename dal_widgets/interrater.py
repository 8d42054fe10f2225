"""Inter-rater agreement (``dal.agreement``): Cohen's kappa per pair, Fleiss' kappa (overall
and per class) and Krippendorff's alpha (nominal), from many labels per item.

>>> import dal_widgets as dal
>>> a = dal.agreement([("img1", "alice", "cat"), ("img1", "bob", "cat"),
...                    ("img2", "alice", "dog"), ("img2", "bob", "cat")])  # doctest: +SKIP
>>> a.fleiss, a.alpha, a.pairs  # doctest: +SKIP

Items with a single label carry no information about agreement and are left out of every
figure (they are counted in ``n_single``). An annotator who labels an item twice counts once,
with their newest label (give the ratings oldest first).

References: Cohen, "A coefficient of agreement for nominal scales" (1960); Fleiss, "Measuring
nominal scale agreement among many raters" (1971), with the per-category kappas of its section
4 (generalized here to a varying number of raters per item: each item's disagreement is
weighed by 1 / (n_i - 1), which is Fleiss' formula when n_i is constant); Krippendorff,
"Computing Krippendorff's alpha-reliability" (2011), nominal metric, which allows missing
ratings.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dal_widgets._checks import param_error
from dal_widgets.stopping import cohen_kappa

__all__ = ["Agreement", "agreement", "fleiss_kappa", "krippendorff_alpha"]


def _triples(ratings: Any, where: str) -> list[tuple[Any, Any, Any]]:
    if isinstance(ratings, Mapping):  # {item: {annotator: label}}
        out = []
        for item, by in ratings.items():
            if not isinstance(by, Mapping):
                raise param_error(
                    "ratings", where, "{item: {annotator: label}} or (item, annotator, label) "
                    "triples", ratings, TypeError,
                )  # fmt: skip
            out += [(item, who, lab) for who, lab in by.items()]
        return out
    if isinstance(ratings, (str, bytes)) or not isinstance(ratings, Iterable):
        raise param_error(
            "ratings", where, "(item, annotator, label) triples or {item: {annotator: label}}",
            ratings, TypeError,
        )  # fmt: skip
    out = []
    for row in ratings:
        if isinstance(row, Mapping):  # a store record: {"id", "annotator", "label", ...}
            row = (row.get("id"), row.get("annotator"), row.get("label"))
        if not isinstance(row, (tuple, list)) or len(row) != 3:
            raise param_error("ratings", where, "(item, annotator, label) triples", row, TypeError)
        out.append(tuple(row))
    return out


def _counts(items: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_items, n_classes) counts of each label per item (items and labels as codes)."""
    counts = np.zeros((int(items.max()) + 1 if items.size else 0, n_classes), dtype=np.int64)
    np.add.at(counts, (items, labels), 1)
    return counts


def fleiss_kappa(counts: Any) -> tuple[float, np.ndarray]:
    """Fleiss' kappa and the per-category kappas of an (items, categories) count table (how
    many raters put each item in each category; items with fewer than two ratings are
    dropped). NaN where it is undefined (one category only)."""
    counts = np.asarray(counts, dtype=np.float64)
    n_i = counts.sum(1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if counts.size == 0:
        return float("nan"), np.full(counts.shape[1], np.nan)
    p = counts.sum(0) / n_i.sum()
    agree_i = ((counts**2).sum(1) - n_i) / (n_i * (n_i - 1))
    p_bar, p_e = agree_i.mean(), float((p**2).sum())
    kappa = (p_bar - p_e) / (1 - p_e) if p_e < 1 else float("nan")
    # Per category: observed disagreement on "j or not j" against the chance one.
    observed = (counts * (n_i[:, None] - counts) / (n_i[:, None] - 1)).sum(0)
    chance = n_i.sum() * p * (1 - p)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(chance > 0, 1 - observed / chance, np.nan)
    return float(kappa), per


def krippendorff_alpha(counts: Any) -> float:
    """Krippendorff's alpha, nominal metric, from an (items, categories) count table (missing
    ratings are simply absent; items with fewer than two ratings are not pairable)."""
    counts = np.asarray(counts, dtype=np.float64)
    m = counts.sum(1)
    counts, m = counts[m >= 2], m[m >= 2]
    if counts.size == 0:
        return float("nan")
    # Coincidences: o[c, k] = sum over items of n_uc (n_uk - [c == k]) / (m_u - 1).
    weights = counts / (m[:, None] - 1)
    o = weights.T @ counts - np.diag(weights.sum(0))
    n_c = o.sum(1)
    n = n_c.sum()
    d_o = (n - np.trace(o)) / n
    d_e = (n * n - (n_c**2).sum()) / (n * (n - 1))
    return float(1 - d_o / d_e) if d_e > 0 else float("nan")


@dataclass
class Agreement:
    """Agreement figures of one set of ratings (see :func:`agreement`)."""

    #: One row per annotator pair with at least one item in common: ``a``, ``b``, ``items``
    #: (labeled by both) and ``kappa`` (Cohen's, on those items).
    pairs: list[dict[str, Any]]
    fleiss: float
    alpha: float
    #: Fleiss' per-category kappa, by class.
    per_class: dict[Any, float]
    #: Items with two or more labels (those the figures use), and with one.
    n_items: int
    n_single: int
    annotators: list[Any] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"Agreement({self.n_items} items with 2+ labels, {len(self.annotators)} annotators, "
            f"Fleiss kappa {self.fleiss:.3f}, Krippendorff alpha {self.alpha:.3f})"
        )

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(str(p['a']))}</td><td>{esc(str(p['b']))}</td>"
            f"<td>{p['items']}</td><td>{p['kappa']:.3f}</td></tr>"
            for p in self.pairs
        )
        classes = "".join(
            f"<tr><td>{esc(str(c))}</td><td>{k:.3f}</td></tr>" for c, k in self.per_class.items()
        )
        return (
            f"<div><b>{esc(repr(self))}</b>"
            "<table><tr><th>annotator</th><th>annotator</th><th>items</th>"
            f"<th>Cohen's kappa</th></tr>{rows}</table>"
            f"<table><tr><th>class</th><th>Fleiss kappa</th></tr>{classes}</table></div>"
        )


def agreement(ratings: Any) -> Agreement:
    """Agreement between annotators.

    Parameters
    ----------
    ratings : iterable of (item, annotator, label), or {item: {annotator: label}}
        Labels are any hashable values (class names). Store records (dicts with ``id``,
        ``annotator`` and ``label``) work too.

    Returns
    -------
    Agreement
        ``pairs`` (Cohen's kappa per annotator pair on the items both labeled), ``fleiss``
        (Fleiss' kappa) and ``per_class`` (its per-category kappas), ``alpha``
        (Krippendorff's, nominal), over the items with at least two labels.
    """
    where = "agreement"
    newest: dict[tuple[Any, Any], Any] = {}
    for item, who, label in _triples(ratings, where):
        if label is not None:
            newest[(item, who)] = label
    if not newest:
        raise param_error("ratings", where, "at least one (item, annotator, label)", ratings)
    keys = list(newest)
    item_codes, items = np.unique(np.array([repr(k[0]) for k in keys]), return_inverse=True)
    who_names = sorted({k[1] for k in keys}, key=repr)
    who_index = {w: i for i, w in enumerate(who_names)}
    class_names = sorted({newest[k] for k in keys}, key=repr)
    class_index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([class_index[newest[k]] for k in keys])
    whos = np.array([who_index[k[1]] for k in keys])
    counts = _counts(items, labels, len(class_names))
    per_item = counts.sum(1)
    fleiss, per = fleiss_kappa(counts)
    # Cohen's kappa per pair: an (items, annotators) table of label codes, -1 where missing.
    table = np.full((len(item_codes), len(who_names)), -1, dtype=np.int64)
    table[items, whos] = labels
    pairs = []
    for i in range(len(who_names)):
        for j in range(i + 1, len(who_names)):
            both = (table[:, i] >= 0) & (table[:, j] >= 0)
            if both.any():
                pairs.append(
                    {
                        "a": who_names[i],
                        "b": who_names[j],
                        "items": int(both.sum()),
                        "kappa": cohen_kappa(table[both, i], table[both, j]),
                    }
                )
    return Agreement(
        pairs=pairs,
        fleiss=fleiss,
        alpha=krippendorff_alpha(counts),
        per_class={c: float(k) for c, k in zip(class_names, per)},
        n_items=int((per_item >= 2).sum()),
        n_single=int((per_item == 1).sum()),
        annotators=who_names,
    )
