"""Query strategies: small pure functions on arrays, found by name.

>>> from dal_widgets import strategies
>>> strategies.available()[:3]  # doctest: +SKIP
>>> picks = strategies.select("entropy", 10, probs=probs, labeled_mask=mask, rng=0)  # doctest: +SKIP

See :func:`register` to add your own.
"""

from __future__ import annotations

from dal_widgets.strategies import _uncertainty  # noqa: F401  (registers the strategies)
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

__all__ = [
    "ARRAYS",
    "DegenerateScoresError",
    "Strategy",
    "available",
    "describe",
    "get",
    "register",
    "scores",
    "select",
]
