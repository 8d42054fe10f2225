"""The strategy registry: strategies are found by name and run on plain arrays.

A strategy is a small function that declares which arrays it needs (``needs``). There are
two kinds:

* ``"score"``: ``fn(**arrays) -> (N,) scores`` where a higher score means "ask for this one
  first". :func:`select` takes the top ``n`` unlabeled positions, ties broken by the rng.
* ``"batch"``: ``fn(n, *, candidates, labeled_mask, rng, device, **arrays) -> positions``
  for strategies that pick a batch jointly (diversity, BatchBALD, BADGE, ...). They pick
  only from ``candidates`` (a composed strategy passes a pre-filtered subset) and read
  ``labeled_mask`` for what is labeled (core-set's initial centres, for instance).

The registry checks every input once, here, so strategy functions can trust their arrays, and
checks every output (unique, exactly ``n``, only unlabeled) so a buggy strategy cannot hand the
session duplicates. :mod:`~dal_widgets.strategies._usable` reads the same ``needs`` to tell a
picker, or a query, which strategies a session's data and training can feed.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, did_you_mean, param_error, short_repr
from dal_widgets.strategies._common import float_dtype, row_chunks

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

#: The arrays a strategy can ask for: name -> (number of dimensions, description).
#: The session computes each array a strategy needs once per round and passes it by this name.
ARRAYS: dict[str, tuple[int, str]] = {
    "probs": (2, "an (N, C) array of softmax probabilities"),
    "mc_probs": (3, "an (N, T, C) array of softmax probabilities from T MC-dropout passes"),
    "member_probs": (3, "an (N, M, C) array of softmax probabilities from M ensemble members"),
    "embeddings": (2, "an (N, D) array of penultimate-layer embeddings"),
    "features": (2, "an (N, F) array of input features (raw or self-supervised)"),
    "loss_pred": (1, "an (N,) array of losses predicted by a loss-prediction head"),
    "label_probs": (2, "an (N, C) array of independent per-class probabilities (multi-label)"),
    "adv_dist": (
        1,
        "an (N,) array of DeepFool perturbation norms (distance to the decision boundary)",
    ),
}

_PROB_ARRAYS = ("probs", "mc_probs", "member_probs")


class DegenerateScoresError(ValueError):
    """All candidate scores are equal: the ranking carries no information.

    The message names the likely causes for the arrays the strategy reads
    (:func:`degenerate_hint`): constant model outputs for probabilities (unscaled features,
    too few steps, a dead network), missing or too weak dropout for MC-dropout passes, and so
    on.
    """


#: What can make every score equal (see degenerate_hint).
_CAUSES: dict[str, str] = {
    "dropout": "no dropout layers in the model, or dropout too weak (p near 0) to change "
    "the predictions",
    "copies": "ensemble members that are copies (the same weights or the same seed)",
    "head": "a loss-prediction head that was not trained (TrainConfig(loss_head=True))",
    "constant": "constant model outputs, from unscaled input features (a column of Unix "
    "timestamps or 1e15-sized counts swamps the others and saturates the network: "
    "standardize the features, as the default model does), too few training steps or "
    "labels, inputs that carry nothing to learn from (empty texts, all-zero features), or a "
    "dead network (every ReLU off, e.g. after too high a learning rate)",
    "features": "input features that are the same for every sample",
}

#: Per array: what the user sees when it makes every score equal, and its likely causes.
_SYMPTOMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "probs": ("every candidate gets the same probabilities", ("constant",)),
    "label_probs": ("every candidate gets the same label probabilities", ("constant",)),
    "mc_probs": ("the MC-dropout passes agree on every candidate", ("dropout", "constant")),
    "member_probs": ("the ensemble members agree on every candidate", ("copies", "constant")),
    "embeddings": ("every candidate has the same penultimate embedding", ("constant",)),
    "features": ("every candidate has the same input features", ("features",)),
    "loss_pred": (
        "the loss-prediction head predicts the same loss for every candidate",
        ("head", "constant"),
    ),
    "adv_dist": (
        "every candidate is at the same DeepFool distance from the boundary",
        ("constant",),
    ),
}


def degenerate_hint(arrays: Any) -> str:
    """Why every score can be equal, for a strategy that reads ``arrays`` (names from ARRAYS).

    For the messages of :class:`DegenerateScoresError`, here and in batch strategies.
    """
    used = [a for a in ARRAYS if a in set(arrays)]
    if not used:
        return "Check the model's outputs."
    causes = dict.fromkeys(c for a in used for c in _SYMPTOMS[a][1])  # ordered, unique
    return (
        f"It reads {' and '.join(map(repr, used))}: "
        f"{', or '.join(_SYMPTOMS[a][0] for a in used)}. "
        f"Likely causes: {'; or '.join(_CAUSES[c] for c in causes)}."
    )


@dataclass(frozen=True)
class Strategy:
    """A registered strategy.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"entropy"``.
    fn : callable
        The function (see the module docstring for the two signatures).
    needs : frozenset of str
        Names from :data:`ARRAYS` that ``fn`` requires.
    kind : {"score", "batch"}
        Whether ``fn`` returns scores or picks a batch itself.
    description : str
        One line for pickers and docs (the first line of the docstring).
    optional : frozenset of str
        Arrays ``fn`` uses when given but can do without.
    params : frozenset of str
        The function's own keyword-only parameters (e.g. ``num_samples``), which
        :func:`select` passes through.
    """

    name: str
    fn: Callable[..., Any]
    needs: frozenset[str]
    kind: str
    description: str
    optional: frozenset[str] = field(default_factory=frozenset)
    params: frozenset[str] = field(default_factory=frozenset)

    @property
    def needs_model(self) -> bool:
        """Whether it needs model outputs (anything but raw ``features``)."""
        return bool(self.needs - {"features"})

    def arrays_for(self, have_model: bool) -> set[str]:
        """What to compute for it: its needs, plus the optional arrays available now (raw
        features always; one model's outputs once a model exists)."""
        usable = {"features"} | (
            set(ARRAYS) - {"features", "member_probs"} if have_model else set()
        )
        return set(self.needs) | (set(self.optional) & usable)


_REGISTRY: dict[str, Strategy] = {}


def register(
    name: str,
    *,
    needs: set[str] | frozenset[str] | tuple[str, ...] = (),
    kind: str = "score",
    optional: set[str] | frozenset[str] | tuple[str, ...] = (),
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers a strategy function under ``name``.

    Parameters
    ----------
    name : str
        The registry name (lower case, words joined by ``_``).
    needs : set of str
        Arrays the function requires, from :data:`ARRAYS`.
    kind : {"score", "batch"}
        ``"score"`` functions return one score per sample (higher = more useful to label);
        ``"batch"`` functions return the chosen positions themselves.
    optional : set of str
        Arrays the function uses when they are given.
    replace : bool
        Allow replacing an existing registration (for notebooks that redefine a strategy).

    Notes
    -----
    The function's docstring matters: its first line is the description pickers show, and
    the rest should cite the method's paper. Keyword-only parameters other than the reserved
    ones become the strategy's own parameters, passed through :func:`select`. The registry
    has already checked the arrays (shapes, finite, probabilities summing to 1) and checks
    the picks afterwards, so the function holds only the method itself. To combine an
    uncertainty score with a diversity step, see :func:`~dal_widgets.strategies.compose`.

    Examples
    --------
    A new strategy in a few lines (a score: the probability of the least likely class)::

        @register("min_prob", needs={"probs"})
        def min_prob(probs):
            "Smallest class probability: samples that rule nothing out."
            return -probs.min(axis=1)

    A batch strategy in about ten: one sample from each of ``n`` strata of the embeddings'
    first coordinate, with a parameter of its own and randomness only from ``rng``::

        @register("strata", needs={"embeddings"}, kind="batch")
        def strata(n, *, candidates, labeled_mask, rng, embeddings, jitter=0.0):
            "One random sample per quantile bin of the first embedding coordinate."
            key = embeddings[candidates, 0] + jitter * rng.standard_normal(candidates.size)
            order = candidates[np.argsort(key, kind="stable")]
            bins = np.array_split(order, n)
            return np.array([b[rng.integers(b.size)] for b in bins])

        strategies.select("strata", 5, embeddings=h, rng=0, jitter=0.1)
    """
    where = "strategies.register"
    if not isinstance(name, str) or not name:
        raise param_error("name", where, "a non-empty str", name, TypeError)
    if kind not in ("score", "batch"):
        raise param_error("kind", where, "'score' or 'batch'", kind)
    for label, names in (("needs", needs), ("optional", optional)):
        unknown = set(names) - set(ARRAYS)
        if unknown:
            raise param_error(
                label, where, f"a set of names from {sorted(ARRAYS)}", sorted(unknown)
            )

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and not replace:
            raise ValueError(
                f"A strategy named {name!r} is registered already. "
                "Pass replace=True to register() to replace it."
            )
        doc = inspect.getdoc(fn) or ""
        description = doc.strip().splitlines()[0] if doc.strip() else name
        sig = inspect.signature(fn).parameters
        reserved = {"n", "candidates", "labeled_mask", "rng", "device", *ARRAYS}
        params = frozenset(
            p
            for p, v in sig.items()
            if p not in reserved and v.kind == inspect.Parameter.KEYWORD_ONLY
        )
        _REGISTRY[name] = Strategy(
            name=name,
            fn=fn,
            needs=frozenset(needs),
            kind=kind,
            description=description,
            optional=frozenset(optional),
            params=params,
        )
        return fn

    return decorator


def available() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Strategy:
    """The :class:`Strategy` registered under ``name``.

    Raises
    ------
    KeyError
        For an unknown name, with the closest names suggested.
    """
    if isinstance(name, Strategy):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(
            f"Unknown strategy {short_repr(name)}.{did_you_mean(str(name), _REGISTRY)} "
            f"Available: {', '.join(available())}."
        ) from None


def describe() -> dict[str, str]:
    """Mapping of every strategy name to its one-line description."""
    return {name: _REGISTRY[name].description for name in available()}


def _as_rng(rng: Any, where: str) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise param_error("rng", where, "None, an int seed or a numpy Generator", rng, TypeError)


# Elements per validation chunk: temporaries stay bounded (1 MB of float32) whatever the pool
# size, and fit the L2 cache (measured fastest of 256 kB to 4 MB).
_CHECK_CHUNK = 1 << 18


def _check_values(key: str, arr: np.ndarray, text: str, where: str) -> None:
    """Reject NaN and infinity; for probability arrays also negative entries and bad row sums.

    Works on chunks of rows so no temporary grows with the pool (full-size float64 row sums
    of an (N, T, C) array were 1.6 GB at N = 1e6, T = 20). The row sums come from one
    pass per chunk, and a non-finite entry makes its row sum non-finite, so
    probability arrays need no separate finiteness pass. ``np.einsum`` sums the short rows
    several times faster than ``sum(axis=-1)`` and, unlike a BLAS product, on one thread
    (threaded BLAS calls on small chunks stall when another process holds a core).
    """
    if arr.size == 0:
        return
    row_elems = arr.size // arr.shape[0]
    if key not in _PROB_ARRAYS:
        if arr.dtype.kind != "f":
            return
        bad = 0
        for start, stop in row_chunks(arr.shape[0], row_elems, _CHECK_CHUNK):
            finite = np.isfinite(arr[start:stop])
            if not finite.all():
                bad += int(finite.size - np.count_nonzero(finite))
        if bad:
            raise ValueError(
                f"The {key!r} parameter of {where} must hold finite numbers. "
                f"Got {bad} NaN or infinite value(s) instead."
            )
        return
    n_classes = arr.shape[-1]
    dtype = float_dtype(arr.dtype)
    bad = 0
    lo, hi, smallest = np.inf, -np.inf, np.inf
    for start, stop in row_chunks(arr.shape[0], row_elems, _CHECK_CHUNK):
        chunk = arr[start:stop].reshape(-1, n_classes).astype(dtype, copy=False)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is reported below
            sums = np.einsum("ij->i", chunk)
        if not np.isfinite(sums).all():
            finite = np.isfinite(chunk)
            bad += int(finite.size - np.count_nonzero(finite))
        if bad:
            continue  # the message reports the count only; skip the (NaN-poisoned) ranges
        lo, hi = min(lo, float(sums.min())), max(hi, float(sums.max()))
        smallest = min(smallest, float(chunk.min()))
    if bad:
        raise ValueError(
            f"The {key!r} parameter of {where} must hold finite numbers. "
            f"Got {bad} NaN or infinite value(s) instead."
        )
    if smallest < 0 or max(abs(lo - 1.0), abs(hi - 1.0)) > 1e-3:
        raise ValueError(
            f"The {key!r} parameter of {where} must be {text}: non-negative, each row "
            f"summing to 1. Got row sums in [{lo:.4g}, {hi:.4g}] and "
            f"minimum {smallest:.4g} instead (did you pass logits?)."
        )


def _check_arrays(
    strategy: Strategy, arrays: Mapping[str, Any], labeled_mask: Any, where: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Validate the given arrays against the contract; return them and the labeled mask."""
    checked: dict[str, np.ndarray] = {}
    n_rows: dict[str, int] = {}
    for key, value in arrays.items():
        if value is None:
            continue
        if key not in ARRAYS:
            raise TypeError(
                f"{where} got an unexpected array {key!r}.{did_you_mean(key, ARRAYS)} "
                f"Known arrays: {', '.join(ARRAYS)}."
            )
        ndim, text = ARRAYS[key]
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):
            raise param_error(key, where, text, value, TypeError) from None
        if arr.dtype.kind not in "fiub":
            raise param_error(key, where, text + " of numbers", arr, TypeError)
        if arr.ndim != ndim:
            raise param_error(key, where, text, arr)
        _check_values(key, arr, text, where)
        checked[key] = arr
        n_rows[key] = arr.shape[0]
    if labeled_mask is not None:
        mask = np.asarray(labeled_mask)
        if mask.dtype != bool or mask.ndim != 1:
            raise param_error("labeled_mask", where, "a 1-D bool array", mask, TypeError)
        n_rows["labeled_mask"] = mask.shape[0]
    if len(set(n_rows.values())) > 1:
        sizes = ", ".join(f"{k}: {v}" for k, v in n_rows.items())
        raise ValueError(
            f"The arrays given to {where} must share their first dimension. Got {sizes}."
        )
    missing = sorted(strategy.needs - set(checked))
    if missing:
        wanted = "; ".join(f"{m!r} ({ARRAYS[m][1]})" for m in missing)
        raise ValueError(f"Strategy {strategy.name!r} needs {wanted}, which {where} was not given.")
    if not n_rows:
        raise ValueError(
            f"{where} cannot tell the pool size: strategy {strategy.name!r} needs no arrays, so "
            "pass labeled_mask (a bool array with one entry per pool sample)."
        )
    n_pool = next(iter(n_rows.values()))
    mask = np.zeros(n_pool, dtype=bool) if labeled_mask is None else np.asarray(labeled_mask)
    # mc_probs and member_probs must agree with probs on C.
    classes = {k: a.shape[-1] for k, a in checked.items() if k in _PROB_ARRAYS}
    if len(set(classes.values())) > 1:
        raise ValueError(
            f"The probability arrays given to {where} disagree on the number of classes: {classes}."
        )
    return checked, mask


def _top_n(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``n`` largest values, best first; ties broken at random, not by index."""
    size = values.shape[0]
    if n < size:
        kth = size - n
        thresh = values[np.argpartition(values, kth)[kth]]
        above = np.flatnonzero(values > thresh)
        ties = np.flatnonzero(values == thresh)
        need = n - above.size
        if ties.size > need:
            ties = rng.choice(ties, size=need, replace=False)
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.arange(size)
    order = np.lexsort((rng.random(chosen.size), -values[chosen]))
    return chosen[order]


def _call_scores(
    strategy: Strategy, arrays: dict[str, np.ndarray], kwargs: dict[str, Any], where: str
) -> np.ndarray:
    needed = {k: v for k, v in arrays.items() if k in strategy.needs or k in strategy.optional}
    extra = {k: v for k, v in kwargs.items() if k in strategy.params}
    out = np.asarray(strategy.fn(**needed, **extra))
    if out.dtype not in (np.float32, np.float64):
        # float32 scores are ranked as they are: widening a million of them costs more
        # than the ranking itself, and scores() widens for its callers.
        out = out.astype(np.float64)
    n_pool = next(iter(arrays.values())).shape[0]
    if out.shape != (n_pool,):
        raise RuntimeError(
            f"Strategy {strategy.name!r} returned scores of shape {out.shape}, expected ({n_pool},)."
        )
    if not np.isfinite(out).all():
        raise DegenerateScoresError(
            f"Strategy {strategy.name!r} produced {int((~np.isfinite(out)).sum())} NaN or infinite "
            "score(s); check the model's outputs."
        )
    return out


def _check_kwargs(strategy: Strategy, kwargs: dict[str, Any], where: str) -> None:
    unknown = set(kwargs) - strategy.params - {"device"}
    if unknown:
        name = sorted(unknown)[0]
        raise TypeError(
            f"{where} got an unexpected keyword argument {name!r} for strategy {strategy.name!r}."
            f"{did_you_mean(name, strategy.params)} "
            f"Its parameters: {', '.join(sorted(strategy.params)) or 'none'}."
        )


def scores(
    name: str,
    *,
    probs: Any = None,
    mc_probs: Any = None,
    embeddings: Any = None,
    **arrays_and_params: Any,
) -> np.ndarray:
    """Per-sample scores of a score-based strategy (higher = more useful to label).

    Parameters
    ----------
    name : str
        A strategy from :func:`available` whose kind is ``"score"``.
    probs, mc_probs, embeddings : array-like, optional
        See :data:`ARRAYS`; other arrays from :data:`ARRAYS` and the strategy's own parameters
        go by keyword.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64 scores.
    """
    where = f"strategies.scores({name!r})"
    strategy = get(name)
    if strategy.kind != "score":
        raise ValueError(
            f"Strategy {name!r} selects a batch jointly and has no per-sample scores; "
            "use strategies.select()."
        )
    arrays = {k: v for k, v in arrays_and_params.items() if k in ARRAYS}
    kwargs = {k: v for k, v in arrays_and_params.items() if k not in ARRAYS}
    _check_kwargs(strategy, kwargs, where)
    checked, _ = _check_arrays(
        strategy,
        {"probs": probs, "mc_probs": mc_probs, "embeddings": embeddings, **arrays},
        None,
        where,
    )
    return _call_scores(strategy, checked, kwargs, where).astype(np.float64, copy=False)


def select(
    name: str,
    n: int,
    *,
    probs: Any = None,
    mc_probs: Any = None,
    embeddings: Any = None,
    labeled_mask: Any = None,
    rng: Any = None,
    return_scores: bool = False,
    **arrays_and_params: Any,
) -> Any:
    """Choose ``n`` pool positions to label next.

    Parameters
    ----------
    name : str
        A strategy from :func:`available`.
    n : int
        How many to choose; at least 1 and at most the number of unlabeled positions.
    probs, mc_probs, embeddings : array-like, optional
        Model outputs over the pool, see :data:`ARRAYS`. Other arrays from :data:`ARRAYS`
        (``member_probs``, ``features``, ``loss_pred``) and the strategy's own parameters
        (``device`` for the torch-based ones) go by keyword too.
    labeled_mask : bool array of shape (N,), optional
        True where a position is labeled already; those are never chosen.
    rng : None, int or numpy.random.Generator
        Source of randomness for random picks and for breaking ties.
    return_scores : bool
        Also return the per-sample scores the picks were ranked by (``(N,)`` float64, or None
        for strategies that pick a batch jointly), computed once: ``(picks, scores)``.

    Returns
    -------
    numpy.ndarray, or (numpy.ndarray, numpy.ndarray or None) with ``return_scores``
        ``n`` unique int64 positions into the given arrays, unlabeled, best first where the
        strategy ranks.

    Raises
    ------
    KeyError
        Unknown strategy name.
    ValueError
        A needed array is missing or malformed, ``n`` is out of range, or all scores are equal.
    """
    where = f"strategies.select({name!r})"
    strategy = get(name)
    generator = _as_rng(rng, where)
    arrays = {k: v for k, v in arrays_and_params.items() if k in ARRAYS}
    kwargs = {k: v for k, v in arrays_and_params.items() if k not in ARRAYS}
    _check_kwargs(strategy, kwargs, where)
    checked, mask = _check_arrays(
        strategy,
        {"probs": probs, "mc_probs": mc_probs, "embeddings": embeddings, **arrays},
        labeled_mask,
        where,
    )
    candidates = np.flatnonzero(~mask)
    if candidates.size == 0:
        raise ValueError(f"{where} has no unlabeled candidates left: every position is labeled.")
    n = check_int(n, "n", where, lo=1)
    if n > candidates.size:
        raise ValueError(
            f"The 'n' parameter of {where} must be at most the number of unlabeled candidates "
            f"({candidates.size} of {mask.size}). Got {n} instead."
        )

    all_scores = None
    if strategy.kind == "score":
        values = all_scores = _call_scores(strategy, checked, kwargs, where)
        if candidates.size < values.size:
            values = values[candidates]
        if n < candidates.size and values.max() == values.min():
            raise DegenerateScoresError(
                f"Strategy {name!r} gave the same score ({values[0]:.6g}) to all "
                f"{candidates.size} candidates, so its ranking means nothing. "
                + degenerate_hint(strategy.needs | strategy.optional)
            )
        picks = candidates[_top_n(values, n, generator)]
    else:
        needed = {k: v for k, v in checked.items() if k in strategy.needs or k in strategy.optional}
        extra = {k: v for k, v in kwargs.items() if k in strategy.params or k == "device"}
        if "device" not in inspect.signature(strategy.fn).parameters:
            extra.pop("device", None)
        picks = np.asarray(
            strategy.fn(
                n, candidates=candidates, labeled_mask=mask, rng=generator, **needed, **extra
            )
        ).astype(np.int64, copy=False)
    _check_picks(picks, n, mask, name)
    if return_scores:
        return picks, None if all_scores is None else all_scores.astype(np.float64, copy=False)
    return picks


def _check_picks(picks: np.ndarray, n: int, mask: np.ndarray, name: str) -> None:
    """Guard the contract against a buggy strategy: unique, exactly n, unlabeled, in range."""
    problem = None
    if picks.shape != (n,):
        problem = f"returned {picks.shape} picks instead of ({n},)"
    elif picks.size and (picks.min() < 0 or picks.max() >= mask.size):
        problem = "returned positions outside the pool"
    elif np.unique(picks).size != n:
        problem = "returned duplicate positions"
    elif mask[picks].any():
        problem = "returned labeled positions"
    if problem:
        raise RuntimeError(f"Strategy {name!r} {problem}; this is a bug in the strategy.")
