"""Query strategies: small pure functions on arrays, found by name.

>>> from dal_widgets import strategies
>>> strategies.available()[:3]  # doctest: +SKIP
>>> picks = strategies.select("entropy", 10, probs=probs, labeled_mask=mask, rng=0)  # doctest: +SKIP

The library follows the taxonomy of Ren et al., "A survey of deep active learning" (2021):

* random, and uncertainty on ``probs``: least_confidence, margin, ratio, entropy;
* deep Bayesian on MC-dropout ``mc_probs``: bald, variation_ratios, mean_std, max_entropy;
* query by committee on ensemble ``member_probs``: vote_entropy, consensus_kl;
* batch-aware: batchbald;
* diversity on ``embeddings``: coreset, kmeans, and the hybrid cluster_margin;
* hybrid: badge (gradient embeddings from ``probs`` and ``embeddings``);
* cold start on ``features`` (or ``embeddings``): typiclust, probcover;
* budget-aware: auto (typiclust while labels are few, then margin);
* expected model change: egl; learned loss: learning_loss; adversarial: dfal;
* multi-label, on per-class ``label_probs``: multilabel_entropy, multilabel_margin;
* composed: margin_coreset (see :func:`compose`).

:func:`describe` gives each one's one-line description; :func:`usable` the ones a session's
data and training can feed (a picker's options), :func:`unusable_reason` why another cannot run
there. To add your own, see :func:`register` (a score or a batch function in about ten lines)
and :func:`compose` (pre-filter + diversity).
"""

from __future__ import annotations

# Importing a module registers its strategies; _compose goes last (it composes the others).
from dal_widgets.strategies import (
    _adversarial,  # noqa: F401
    _auto,  # noqa: F401
    _badge,  # noqa: F401
    _batchbald,  # noqa: F401
    _bayesian,  # noqa: F401
    _coldstart,  # noqa: F401
    _committee,  # noqa: F401
    _diversity,  # noqa: F401
    _gradient,  # noqa: F401
    _learned,  # noqa: F401
    _multilabel,  # noqa: F401
    _uncertainty,  # noqa: F401  (registers the strategies)
)
from dal_widgets.strategies._compose import compose
from dal_widgets.strategies._registry import (
    ARRAYS,
    DegenerateScoresError,
    Strategy,
    available,
    describe,
    get,
    register,
    scores,
    select,
)
from dal_widgets.strategies._usable import unusable_reason, usable

__all__ = [
    "ARRAYS",
    "DegenerateScoresError",
    "Strategy",
    "available",
    "compose",
    "describe",
    "get",
    "register",
    "scores",
    "select",
    "unusable_reason",
    "usable",
]
