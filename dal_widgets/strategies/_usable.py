"""Which strategies a session can run: read from what each needs and what the session has.

:func:`unusable_reason` says why a strategy cannot run with a session's data (single- or
multi-label) and training (ensemble size, dropout, a loss-prediction head), or None;
:func:`usable` lists those that can, in :func:`~dal_widgets.strategies.available` order: a
strategy picker's options. The query path raises the same reason before any inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dal_widgets._checks import check_int, param_error
from dal_widgets.strategies._registry import _PROB_ARRAYS, ARRAYS, Strategy, available, get

__all__ = ["unusable_reason", "usable"]


def _bool_arg(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise param_error(name, where, "a bool", value, TypeError)
    return bool(value)


def _array_problem(
    array: str, *, multi_label: bool, ensemble_size: int, dropout: bool, loss_head: bool
) -> str | None:
    """Why a session with these facts cannot give ``array`` (what it needs, what it has,
    what would fix it), or None. Facts of the data first: no config change fixes those."""
    if multi_label and array in _PROB_ARRAYS:
        return (
            f"for single-label data only (it needs softmax {array!r}), and this dataset is "
            "multi-label"
        )
    if not multi_label and array == "label_probs":
        return (
            "for multi-label data only (it needs per-class 'label_probs'), and this dataset is "
            "single-label"
        )
    if array == "member_probs" and ensemble_size < 2:
        return (
            "needs a committee ('member_probs'): TrainConfig(ensemble_size=5), or any size "
            f">= 2, and this session trains {ensemble_size} model per fit"
        )
    if array == "mc_probs" and not dropout:
        return "needs a model with dropout layers ('mc_probs', MC dropout), and this model has none"
    if array == "loss_pred" and not loss_head:
        return (
            "needs a model with a loss-prediction head ('loss_pred'), and this model has none: "
            "fit again with this strategy selected (the default models then get one), or set "
            "TrainConfig(loss_head=True)"
        )
    return None


def _facts(
    where: str, multi_label: Any, ensemble_size: Any, dropout: Any, loss_head: Any
) -> dict[str, Any]:
    return {
        "multi_label": _bool_arg(multi_label, "multi_label", where),
        "ensemble_size": check_int(ensemble_size, "ensemble_size", where, lo=1),
        "dropout": _bool_arg(dropout, "dropout", where),
        "loss_head": _bool_arg(loss_head, "loss_head", where),
    }


def _reason(strategy: Strategy, facts: dict[str, Any]) -> str | None:
    # An optional softmax array too on multi-label data: a session computes optional arrays
    # whenever it has a model (auto's probs), and a multi-label model has no softmax.
    optional = {a for a in strategy.optional if facts["multi_label"] and a in _PROB_ARRAYS}
    wanted = strategy.needs | optional
    for array in ARRAYS:  # a fixed order, so the reason does not change between runs
        if array in wanted:
            problem = _array_problem(array, **facts)
            if problem is not None:
                return problem
    return None


def unusable_reason(
    name: str,
    *,
    multi_label: bool,
    ensemble_size: int,
    dropout: bool = True,
    loss_head: bool = True,
) -> str | None:
    """Why strategy ``name`` cannot run in a session with this data and training, or None.

    Read from the arrays the strategy needs (its ``needs``) and what a session can compute
    from its data and model: softmax arrays (``probs``, ``mc_probs``, ``member_probs``) from
    single-label data only, ``label_probs`` from multi-label data only, ``member_probs`` from
    an ensemble, ``mc_probs`` from a model with dropout, ``loss_pred`` from a model with a
    loss-prediction head. Embeddings, input features and DeepFool distances every session
    has, whatever the kind of data.

    Parameters
    ----------
    name : str
        A strategy from :func:`available`.
    multi_label : bool
        Whether the data is multi-label (``session.multi_label``).
    ensemble_size : int
        Models trained per fit (``session.train_config.ensemble_size``); the committee
        strategies need at least 2.
    dropout : bool
        Whether the model has dropout layers. The default models do; pass False for a custom
        model without, on which the MC-dropout strategies cannot run.
    loss_head : bool
        Whether the model has a loss-prediction head, or the next fit will give it one. The
        default models get one when a fit starts with a strategy that needs it, so a picker
        leaves this True; a query on a model trained without one passes False.

    Returns
    -------
    str or None
        None when the strategy can run; else a short reason that says what it needs, what
        the session has and what would make it runnable, e.g. ``"for multi-label data only
        (it needs per-class 'label_probs'), and this dataset is single-label"``.

    Raises
    ------
    KeyError
        Unknown strategy name (with the closest names suggested).
    TypeError, ValueError
        A fact of the wrong type, or ``ensemble_size`` below 1.

    Examples
    --------
    >>> strategies.unusable_reason("vote_entropy", multi_label=False, ensemble_size=1)
    "needs a committee ('member_probs'): TrainConfig(ensemble_size=5), or any size >= 2, and this session trains 1 model per fit"
    >>> strategies.unusable_reason("entropy", multi_label=False, ensemble_size=1) is None
    True
    """
    where = "strategies.unusable_reason"
    if not isinstance(name, (str, Strategy)):
        raise param_error("name", where, "a strategy name (str)", name, TypeError)
    strategy = get(name)
    return _reason(strategy, _facts(where, multi_label, ensemble_size, dropout, loss_head))


def usable(
    *,
    multi_label: bool,
    ensemble_size: int,
    dropout: bool = True,
    loss_head: bool = True,
) -> list[str]:
    """Names of the strategies that can run in a session with this data and training.

    In the order of :func:`available` (and :func:`describe`): the strategies for which
    :func:`unusable_reason` with the same arguments gives None. For a strategy picker::

        strategies.usable(
            multi_label=session.multi_label,
            ensemble_size=session.train_config.ensemble_size,
        )
    """
    facts = _facts("strategies.usable", multi_label, ensemble_size, dropout, loss_head)
    return [name for name in available() if _reason(get(name), facts) is None]
