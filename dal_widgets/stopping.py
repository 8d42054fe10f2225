"""When to stop labeling: signals that recommend, never stop by themselves.

Three signals, each with its own evidence:

* **Stabilizing predictions** (Bloodgood & Vijay-Shanker, CoNLL 2009): the newest models'
  predictions on a fixed *stop set* of pool samples are compared with Cohen's kappa, model to
  model; when the mean kappa of the last ``window`` comparisons reaches ``threshold`` (the
  paper's defaults: 3 comparisons, 0.99) the model has stopped changing, and more labels of
  the same kind are unlikely to change it much. ``threshold`` is the aggressiveness knob: a
  lower one stops earlier.
* **The held-out plateau**, when the dataset has a held-out split: the best accuracy of the
  last ``window`` evaluations improved on the best before them by less than ``min_gain``.
* **The budget**, when one is given.

:class:`StopMonitor` follows a session (one stop set, one prediction per model version,
computed for the stop set only: a few hundred rows, not the pool) and :meth:`StopMonitor.signals`
says what each signal shows and what it recommends. :func:`stabilizing_stop` applies the rule to
a recorded sequence of kappas (what :func:`~dal_widgets.simulate` reports).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, check_real, param_error

__all__ = ["StopMonitor", "StopSignals", "cohen_kappa", "plateau_stop", "stabilizing_stop"]

#: Bloodgood & Vijay-Shanker (2009): the mean kappa of the last 3 comparisons reaches 0.99.
WINDOW, THRESHOLD = 3, 0.99


def cohen_kappa(a: Any, b: Any) -> float:
    """Cohen's kappa of two label arrays of equal length (class indices or names).

    1.0 when they agree everywhere; 0 when they agree as often as chance does. Two constant,
    equal arrays agree completely (1.0, where the formula would divide by zero).
    """
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise param_error("b", "cohen_kappa", f"a non-empty array as long as a ({a.size})", b.shape)
    codes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inverse[: a.size], inverse[a.size :]
    k = len(codes)
    observed = float(np.mean(ia == ib))
    expected = float(np.bincount(ia, minlength=k) @ np.bincount(ib, minlength=k)) / a.size**2
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def _check_rule(window: Any, threshold: Any, where: str) -> tuple[int, float]:
    return (
        check_int(window, "window", where, lo=1),
        check_real(threshold, "threshold", where, lo=-1.0, hi=1.0),
    )


def stabilizing_stop(
    kappas: Sequence[float], *, window: int = WINDOW, threshold: float = THRESHOLD
) -> int | None:
    """The index (into ``kappas``) at which the rule first says stop, or None.

    ``kappas[i]`` compares model ``i + 1`` with model ``i``; the rule holds at ``i`` when the
    mean of ``kappas[i - window + 1 : i + 1]`` reaches ``threshold``.
    """
    window, threshold = _check_rule(window, threshold, "stabilizing_stop")
    values = np.asarray(list(kappas), dtype=np.float64)
    if values.size < window:
        return None
    means = np.convolve(values, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(means >= threshold)
    return None if hits.size == 0 else int(hits[0] + window - 1)


def plateau_gain(accuracies: Sequence[float], window: int) -> float | None:
    """The best of the last ``window`` accuracies minus the best before them (None when there
    are not more than ``window``)."""
    acc = list(accuracies)
    if len(acc) <= window:
        return None
    return float(max(acc[-window:]) - max(acc[:-window]))


def plateau_stop(
    accuracies: Sequence[float], *, window: int = WINDOW, min_gain: float = 0.005
) -> int | None:
    """The index (into ``accuracies``, one held-out evaluation per round) at which the
    held-out plateau rule first says stop: the best of the last ``window`` evaluations beat
    the best before them by less than ``min_gain``. None if it never does."""
    window = check_int(window, "window", "plateau_stop", lo=1)
    min_gain = check_real(min_gain, "min_gain", "plateau_stop", lo=0.0)
    acc = [float(a) for a in accuracies]
    for i in range(window, len(acc)):
        gain = plateau_gain(acc[: i + 1], window)
        if gain is not None and gain < min_gain:
            return i
    return None


@dataclass(frozen=True)
class StopSignals:
    """What the stopping signals show now (see the module's description)."""

    #: Kappa between each model version and the one before it, oldest first.
    kappas: tuple[float, ...]
    #: Whether the mean of the last ``window`` kappas reached ``threshold``.
    stable: bool
    #: Held-out accuracy gain of the last ``window`` evaluations over the best before them
    #: (None without a held-out split or with too few evaluations).
    plateau_gain: float | None
    plateau: bool
    labeled: int
    budget: int | None
    window: int
    threshold: float

    @property
    def recommend_stop(self) -> bool:
        """True when a signal says more labels are unlikely to pay: predictions are stable,
        the held-out curve is flat, or the budget is spent."""
        spent = self.budget is not None and self.labeled >= self.budget
        return self.stable or self.plateau or spent

    def describe(self) -> str:
        """One line per signal, then the recommendation (never an automatic stop)."""
        w = self.window
        if len(self.kappas) < w:
            lines = [f"stabilizing predictions: {len(self.kappas)} of {w} model comparisons yet"]
        else:
            mean = float(np.mean(self.kappas[-w:]))
            state = "stable" if self.stable else "still changing"
            lines = [
                f"predictions {state} over the last {w} models: "
                f"kappa {mean:.3f} (stop at {self.threshold:.2f})"
            ]
        if self.plateau_gain is None:
            lines.append("held-out plateau: not enough evaluations yet (or no held-out split)")
        else:
            lines.append(
                f"held-out accuracy gained {self.plateau_gain:+.3f} over the last {w} fits"
                + (" (a plateau)" if self.plateau else "")
            )
        if self.budget is not None:
            lines.append(f"budget: {self.labeled} of {self.budget} labels used")
        lines.append(
            "recommendation: you could stop here; more labels are unlikely to change much"
            if self.recommend_stop
            else "recommendation: keep labeling"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "StopSignals(\n  " + self.describe().replace("\n", "\n  ") + "\n)"


class StopMonitor:
    """Follows a session's model versions and tells when labeling could stop.

    Parameters
    ----------
    session : Session
    stop_set : int
        Pool samples in the stop set (a fixed random sample, seeded by the session's seed; the
        whole pool when it is smaller). Predictions on it are computed once per model version.
    window, threshold : int, float
        The stabilizing-predictions rule (defaults from Bloodgood & Vijay-Shanker 2009);
        a lower threshold stops earlier.
    min_gain : float
        The held-out plateau: less gain than this over ``window`` fits.
    budget : int, optional
        Labels you mean to spend at most.

    The monitor sees the models trained after it is made (and the session's current one);
    :meth:`close` unsubscribes it.
    """

    def __init__(
        self,
        session: Any,
        *,
        stop_set: int = 1000,
        window: int = WINDOW,
        threshold: float = THRESHOLD,
        min_gain: float = 0.005,
        budget: int | None = None,
    ) -> None:
        from dal_widgets.session import Session

        where = "StopMonitor"
        if not isinstance(session, Session):
            raise param_error("session", where, "a dal_widgets.Session", session, TypeError)
        stop_set = check_int(stop_set, "stop_set", where, lo=10)
        self.window, self.threshold = _check_rule(window, threshold, where)
        self.min_gain = check_real(min_gain, "min_gain", where, lo=0.0)
        self.budget = None if budget is None else check_int(budget, "budget", where, lo=1)
        self.session = session
        n = len(session.dataset)
        rng = np.random.default_rng([session.seed, 0x5709])
        #: Pool positions of the stop set (fixed for the monitor's life).
        self.positions = np.sort(rng.choice(n, size=min(stop_set, n), replace=False))
        self._lock = threading.Lock()
        self._previous: np.ndarray | None = None
        self._kappas: list[float] = []
        self._unsubscribe = session.on("trained", lambda **kw: self.observe())
        if session.model is not None:
            self.observe()

    def _predictions(self) -> np.ndarray:
        s = self.session
        key = "label_probs" if s.multi_label else "probs"
        probs = s.arrays.at(self.positions, key)
        return probs >= 0.5 if s.multi_label else probs.argmax(1)

    def observe(self) -> float | None:
        """Compare the newest model's stop-set predictions with the previous model's (called
        on every new model); returns the kappa (None for the first model seen)."""
        predictions = self._predictions()
        with self._lock:
            previous, self._previous = self._previous, predictions
            if previous is None:
                return None
            kappa = cohen_kappa(previous, predictions)
            self._kappas.append(kappa)
            return kappa

    @property
    def kappas(self) -> tuple[float, ...]:
        with self._lock:
            return tuple(self._kappas)

    def signals(self) -> StopSignals:
        """What each signal shows now, and the recommendation."""
        kappas = self.kappas
        w = self.window
        stable = stabilizing_stop(kappas[-w:], window=w, threshold=self.threshold) is not None
        accuracies = [
            r["accuracy"]
            for r in self.session.history
            if r.get("accuracy") is not None and r["accuracy"] == r["accuracy"]
        ]
        gain = plateau_gain(accuracies, w)
        return StopSignals(
            kappas=kappas,
            stable=stable,
            plateau_gain=gain,
            plateau=gain is not None and gain < self.min_gain,
            labeled=len(self.session.labels),
            budget=self.budget,
            window=w,
            threshold=self.threshold,
        )

    def close(self) -> None:
        """Stop following the session."""
        self._unsubscribe()
