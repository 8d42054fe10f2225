"""One query: the strategy (or its cold-start stand-in), the arrays it reads, its picks.

:func:`run_query` is the pure part of ``Session.query``: it reads the model's arrays through
the ``compute`` function it is given and calls the registry once, which returns the picks and
the scores behind them together. Recording the query and telling the views is the session's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dal_widgets import strategies as _strategies
from dal_widgets._checks import check_int, param_error
from dal_widgets.strategies._auto import regime

__all__ = ["Query", "check_usable", "exclude_arg", "run_query"]


@dataclass(frozen=True)
class Query:
    """A query as it ran: the round it started, the ids picked (best first where the strategy
    ranks) and their pool positions, the strategy as run (``"random (cold start for
    entropy)"`` when one stood in), the scores over the whole pool (None for strategies that
    pick a batch jointly), the seconds spent computing arrays and selecting, and the arrays
    the strategy read."""

    round: int
    ids: list[Any]
    positions: np.ndarray
    strategy: str
    scores: np.ndarray | None
    infer_s: float = 0.0
    select_s: float = 0.0
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        """``Query(round 3, margin, 10 ids [12, 7, 33, ...], infer 1.52 ms, select 545 µs,
        scores over 1437 samples)``: the first ids, rounded times, no pool-sized arrays."""
        from dal_widgets._repr import fmt_seconds

        shown = ", ".join(repr(i) for i in self.ids[:3]) + (", ..." if len(self.ids) > 3 else "")
        scores = "no scores" if self.scores is None else f"scores over {len(self.scores)} samples"
        return (
            f"Query(round {self.round}, {self.strategy}, {len(self.ids)} ids [{shown}], "
            f"infer {fmt_seconds(self.infer_s)}, select {fmt_seconds(self.select_s)}, {scores})"
        )


def exclude_arg(exclude: Any, where: str) -> list[Any]:
    """``exclude`` as a list, read once (a generator is not consumed by the check)."""
    if exclude is None:
        return []
    if isinstance(exclude, (str, bytes, int, np.integer)) or not isinstance(exclude, Iterable):
        raise param_error(
            "exclude", where, "a sequence of sample ids (or None)", exclude, TypeError
        )
    return list(exclude)


def check_usable(
    name: str, where: str, *, dataset: Any, ensemble_size: int | None, model: Any
) -> None:
    """Raise a ValueError naming the strategy, what it needs and what this session has, when
    the session cannot feed strategy ``name`` (see :func:`run_query` for the arguments)."""
    # No model yet: nothing of it to check (the default models have dropout, and get a loss
    # head when a fit starts with a strategy that needs one).
    dropout = loss_head = True
    if model is not None:
        from dal_widgets.training import has_dropout

        dropout = has_dropout(model)
        loss_head = getattr(model, "loss_head", None) is not None
    facts: dict[str, Any] = {
        "multi_label": bool(dataset.multi_label),
        # None: not known here, so not checked; the pool arrays still refuse a committee
        # strategy when the newest fit trained one model.
        "ensemble_size": 2 if ensemble_size is None else ensemble_size,
        "dropout": dropout,
        "loss_head": loss_head,
    }
    reason = _strategies.unusable_reason(name, **facts)
    if reason is not None:
        raise ValueError(
            f"{where}: strategy {name!r} cannot run in this session: {reason}. "
            f"Strategies that can: {', '.join(_strategies.usable(**facts))}."
        )


def run_query(
    name: str,
    cold_start: str,
    n: int,
    mask: np.ndarray,
    *,
    where: str,
    dataset: Any,
    have_model: bool,
    compute: Callable[[set[str]], dict[str, np.ndarray]],
    seed: int,
    rnd: int,
    device: Any,
    ensemble_size: int | None = None,
    model: Any = None,
    n_labeled: int | None = None,
) -> Query:
    """Pick ``n`` unmasked samples with strategy ``name`` (``cold_start`` while no model
    exists and it needs one), seeded by ``(seed, rnd)``.

    A strategy this session cannot feed is refused first, before any inference (and before a
    cold start stands in for it), with :func:`~dal_widgets.strategies.unusable_reason`'s
    reason: from the data (``dataset.multi_label``), the training (``ensemble_size``, the
    TrainConfig's; None: not checked here) and the model the query will use (``model``; None
    before the first fit, when nothing about the model is checked yet). ``n_labeled``: the
    labels there are (``mask`` also holds skipped and excluded samples), for ``auto``.

    """
    strategy = _strategies.get(name)
    check_usable(strategy.name, where, dataset=dataset, ensemble_size=ensemble_size, model=model)
    available = int((~mask).sum())
    if available == 0:
        raise ValueError(
            f"{where}: every sample is labeled, skipped or excluded; nothing is left to query."
        )
    n = check_int(n, "n", where, lo=1, hi=available)
    used = _strategies.get(cold_start) if strategy.needs_model and not have_model else strategy
    params = {}
    if used.name == "auto":  # its regime counts labels, not skips or exclusions
        params["n_labeled"] = int(mask.sum()) if n_labeled is None else n_labeled
    t0 = time.perf_counter()
    arrays = compute(used.arrays_for(have_model))
    t1 = time.perf_counter()
    picks, scores = _strategies.select(  # scored once: picks and the scores behind them
        used.name,
        n,
        labeled_mask=mask,
        rng=np.random.default_rng([seed, rnd]),
        device=device,
        return_scores=True,
        **arrays,
        **params,
    )
    t2 = time.perf_counter()
    label = used.name if used is strategy else f"{used.name} (cold start for {strategy.name})"
    if used.name == "auto":  # the regime it was in: coverage or margin
        probs = arrays.get("probs")
        label = f"auto ({regime(params['n_labeled'], None if probs is None else probs.shape[1])})"
    ids = [dataset.python_id(i) for i in dataset.ids[picks]]
    return Query(rnd, ids, picks, label, scores, t1 - t0, t2 - t1, arrays)
