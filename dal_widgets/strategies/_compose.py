"""Composition: pre-filter by an uncertainty score, then let a diversity strategy choose.

The pattern behind many hybrids (Cluster-Margin, "uncertainty + core-set", Zhdanov's
pre-filtered k-means): keep the ``factor * n`` most uncertain candidates, then pick ``n`` of
them that cover each other well. :func:`compose` registers such a strategy under a new name,
from any score strategy and any strategy::

    from dal_widgets import strategies

    strategies.compose("entropy_kmeans", prefilter="entropy", then="kmeans", factor=5)
    picks = strategies.select("entropy_kmeans", 10, probs=p, embeddings=h, rng=0)

The diversity step sees the labeled mask unchanged (core-set still treats labeled points as
centres) but may only pick from the pre-filtered candidates.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, param_error
from dal_widgets.strategies._registry import (
    DegenerateScoresError,
    Strategy,
    _top_n,
    get,
    register,
)

__all__ = ["compose"]


def compose(
    name: str,
    *,
    prefilter: str,
    then: str,
    factor: int = 10,
    prefilter_params: dict[str, Any] | None = None,
    then_params: dict[str, Any] | None = None,
    replace: bool = False,
) -> Strategy:
    """Register ``name``: the top ``factor * n`` candidates by ``prefilter``, then ``then``.

    Parameters
    ----------
    name : str
        Registry name of the new strategy.
    prefilter : str
        A score strategy (e.g. ``"margin"``, ``"entropy"``, ``"bald"``).
    then : str
        Any strategy; it chooses ``n`` among the pre-filtered candidates (e.g. ``"coreset"``,
        ``"kmeans"``, ``"badge"``).
    factor : int, default 10
        Size of the pre-filter as a multiple of ``n``; ``select(..., factor=...)`` overrides it.
    prefilter_params, then_params : dict, optional
        Fixed keyword parameters of the two strategies (e.g. ``{"num_samples": 500}``).
    replace : bool
        Allow replacing an existing registration.

    Returns
    -------
    Strategy
        The registered strategy; it needs the union of both strategies' arrays.

    Raises
    ------
    KeyError
        Unknown ``prefilter`` or ``then``.
    ValueError
        ``prefilter`` is not a score strategy, or ``factor`` is not a positive int.
    """
    where = "strategies.compose"
    pre = get(prefilter)
    post = get(then)
    if pre.kind != "score":
        raise param_error("prefilter", where, "the name of a score strategy", prefilter)
    factor = check_int(factor, "factor", where, lo=1)
    pre_params = _check_params(pre, prefilter_params, "prefilter_params", where)
    post_params = _check_params(post, then_params, "then_params", where)
    needs = pre.needs | post.needs
    optional = (pre.optional | post.optional) - needs
    pre_arrays = pre.needs | pre.optional
    post_arrays = post.needs | post.optional
    post_device = "device" in inspect.signature(post.fn).parameters
    default_factor = factor

    def composed(
        n: int,
        *,
        candidates: np.ndarray,
        labeled_mask: np.ndarray,
        rng: np.random.Generator,
        device: Any = None,
        factor: Any = default_factor,
        **arrays,
    ):
        factor = check_int(factor, "factor", f"strategies.select({name!r})", lo=1)
        m = min(candidates.size, factor * n)
        pool = candidates
        if m < candidates.size:
            given = {k: v for k, v in arrays.items() if k in pre_arrays}
            values = np.asarray(pre.fn(**given, **pre_params), dtype=np.float64)[candidates]
            if not np.isfinite(values).all() or values.max() == values.min():
                raise DegenerateScoresError(
                    f"The pre-filter {pre.name!r} of strategy {name!r} gave NaN or all-equal "
                    "scores to the candidates, so it cannot rank them. Check the model's outputs."
                )
            pool = np.sort(candidates[_top_n(values, m, rng)])
        given = {k: v for k, v in arrays.items() if k in post_arrays}
        if post.kind == "score":
            values = np.asarray(post.fn(**given, **post_params), dtype=np.float64)[pool]
            return pool[_top_n(values, n, rng)]
        if post_device:
            given["device"] = device
        return post.fn(
            n, candidates=pool, labeled_mask=labeled_mask, rng=rng, **given, **post_params
        )

    composed.__name__ = composed.__qualname__ = name
    composed.__doc__ = (
        f"Top {factor}n by {pre.name}, then {post.name} among them (composed).\n\n"
        f"Pre-filter: {pre.description}\nThen: {post.description}\n"
    )
    register(name, needs=needs, optional=optional, kind="batch", replace=replace)(composed)
    return get(name)


def _check_params(strategy: Strategy, params: Any, label: str, where: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise param_error(label, where, "a dict of keyword parameters or None", params, TypeError)
    unknown = sorted(set(params) - strategy.params)
    if unknown:
        raise param_error(
            label, where, f"a dict with keys from {sorted(strategy.params)}", unknown, TypeError
        )
    return dict(params)


compose("margin_coreset", prefilter="margin", then="coreset", factor=10)
