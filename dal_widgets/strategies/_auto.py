"""``auto``: a budget-aware default, coverage while labels are few, then margin.

With a handful of labels, uncertainty is a poor guide (the model is barely better than chance
and its least sure samples are outliers); typical samples of the clusters without labels cover
the pool instead (Hacohen, Dekel & Weinshall, "Active learning on a budget", ICML 2022). Once
every class has a few labels, the model's margin is the better signal (Mittal et al., "Parting
with illusions about deep active learning", 2019; DCoM, arXiv 2407.01804, switches the same
way by a measured competence).

The switch rule, on counts the user can see: TypiClust on the input representation
(``features``: the raw inputs, or an encoder's embeddings) while fewer than
``per_class * n_classes`` samples are labeled or no model exists yet; margin on the model's
``probs`` from then on. The query log names the regime (see :func:`regime`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dal_widgets._checks import check_int
from dal_widgets.strategies._coldstart import typiclust
from dal_widgets.strategies._registry import _top_n, register
from dal_widgets.strategies._uncertainty import margin

__all__ = ["PER_CLASS", "regime"]

#: Labels per class (on average) before ``auto`` turns from coverage to margin.
PER_CLASS = 3


def regime(n_labeled: int, n_classes: int | None, per_class: int = PER_CLASS) -> str:
    """``"coverage"`` or ``"margin"``: what ``auto`` does with ``n_labeled`` labels
    (``n_classes`` None: no model yet)."""
    if n_classes is None or n_labeled < per_class * n_classes:
        return "coverage"
    return "margin"


@register("auto", needs={"features"}, optional={"probs"}, kind="batch")
def auto(
    n: int,
    *,
    candidates: np.ndarray,
    labeled_mask: np.ndarray,
    rng: np.random.Generator,
    features: np.ndarray,
    probs: np.ndarray | None = None,
    device: Any = None,
    per_class: int = PER_CLASS,
    n_labeled: int | None = None,
):
    """Budget-aware: TypiClust on the inputs while fewer than ``per_class`` labels per class
    exist (or no model does), then the smallest margins (Hacohen et al., ICML 2022, then
    Scheffer et al., IDA 2001; see the module's notes). ``n_labeled``: the labels there are
    (a session passes it: ``labeled_mask`` also marks skipped and excluded samples); default
    ``labeled_mask.sum()``."""
    where = "strategies.select('auto')"
    per_class = check_int(per_class, "per_class", where, lo=0)
    labeled = (
        int(labeled_mask.sum())
        if n_labeled is None
        else check_int(n_labeled, "n_labeled", where, lo=0)
    )
    n_classes = None if probs is None else int(probs.shape[1])
    if regime(labeled, n_classes, per_class) == "coverage":
        return typiclust(
            n,
            candidates=candidates,
            labeled_mask=labeled_mask,
            rng=rng,
            features=features,
            device=device,
        )
    assert probs is not None  # the margin regime needs a model
    scores = np.asarray(margin(probs[candidates]), dtype=np.float64)
    return candidates[_top_n(scores, n, rng)]
