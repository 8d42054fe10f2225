"""The small tables a :class:`~dal_widgets.simulation.SimulationResult` returns: labels to
reach an accuracy, seconds per round by stage, where a stopping rule would have stopped."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dal_widgets._repr import fmt_float, fmt_seconds, quartiles

__all__ = ["LabelsToReach", "RoundSeconds", "StopReport", "pandas", "seeds_text"]

STAGES = {"train_s": "train", "infer_s": "infer", "select_s": "select", "seconds": "whole round"}


def pandas(where: str) -> Any:
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(
            f"{where} needs pandas, which is not installed: pip install pandas"
        ) from err
    return pd


def seeds_text(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


class LabelsToReach(dict[str, list[int | None]]):
    """What :meth:`SimulationResult.labels_to_reach` returns: strategy -> one number of labels
    per seed (None where the seed never reached the accuracy), a plain dict whose repr
    summarizes each strategy as a median with its interquartile range::

        labels to reach accuracy 0.85:
          random  70 labels (median of 5 seeds; IQR 60-80)
          margin  50 labels (median of the 3 of 5 seeds that reached it; IQR 40-60)
    """

    def __init__(
        self,
        hits: dict[str, list[int | None]] | None = None,
        *,
        accuracy: float = math.nan,
        budget: int = 0,
    ) -> None:
        super().__init__(hits or {})
        self.accuracy = accuracy
        self.budget = budget

    def describe(self, strategy: str) -> str:
        """One strategy's summary, e.g. ``"70 labels (median of 5 seeds; IQR 60-80)"``."""
        hits = self[strategy]
        reached = [h for h in hits if h is not None]
        if not reached:
            by = f" (budget {self.budget} labels)" if self.budget else ""
            return f"not reached in {seeds_text(len(hits))}{by}"
        q = quartiles(reached)
        assert q is not None
        value = f"{fmt_float(q[1])} label{'' if q[1] == 1 else 's'}"
        if len(hits) == 1:
            return f"{value} (1 seed)"
        of = (
            f"median of {len(hits)} seeds"
            if len(reached) == len(hits)
            else f"median of the {len(reached)} of {len(hits)} seeds that reached it"
        )
        spread = "" if q[0] == q[2] else f"; IQR {fmt_float(q[0])}-{fmt_float(q[2])}"
        return f"{value} ({of}{spread})"

    def __repr__(self) -> str:
        if not self:
            return f"labels to reach accuracy {fmt_float(self.accuracy)}: no strategies"
        width = max(len(s) for s in self)
        lines = [f"labels to reach accuracy {fmt_float(self.accuracy)}:"]
        lines += [f"  {s:<{width}}  {self.describe(s)}" for s in self]
        return "\n".join(lines)

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per strategy: ``median``, ``q25``, ``q75`` (labels,
        over the seeds that reached the accuracy; NaN where none did), ``reached`` and
        ``seeds`` (counts)."""
        pd = pandas("LabelsToReach.to_frame")
        rows = []
        for s, hits in self.items():
            q = quartiles(h for h in hits if h is not None) or (math.nan,) * 3
            reached = sum(h is not None for h in hits)
            rows.append([s, q[1], q[0], q[2], reached, len(hits)])
        columns = ["strategy", "median", "q25", "q75", "reached", "seeds"]
        return pd.DataFrame(rows, columns=columns).set_index("strategy")


class RoundSeconds(dict[str, float]):
    """What :meth:`SimulationResult.seconds` returns: mean seconds per round in ``train_s``,
    ``infer_s``, ``select_s`` and ``seconds`` (the whole round), a plain dict of exact floats
    whose repr rounds them with units::

        margin, mean per round over 18 rounds: train 1.84 s, infer 10.3 µs, select 2.1 ms,
        whole round 1.9 s
    """

    def __init__(
        self, means: dict[str, float] | None = None, *, strategy: str = "", rounds: int = 0
    ) -> None:
        super().__init__(means or {})
        self.strategy = strategy
        self.rounds = rounds

    def __repr__(self) -> str:
        head = f"{self.strategy}, mean per round" if self.strategy else "mean per round"
        if self.rounds:
            head += f" over {self.rounds} round{'s' if self.rounds != 1 else ''}"
        stages = ", ".join(f"{STAGES.get(k, k)} {fmt_seconds(v)}" for k, v in self.items())
        return f"{head}: {stages}"

    def to_frame(self) -> Any:
        """A one-row pandas DataFrame (index: the strategy; columns: the seconds)."""
        pd = pandas("RoundSeconds.to_frame")
        return pd.DataFrame([dict(self)], index=pd.Index([self.strategy], name="strategy"))


class StopReport(list[dict[str, Any]]):
    """What :meth:`SimulationResult.stopping` returns: one dict per strategy and seed with
    ``stop_labels`` and ``stop_accuracy`` (where the stabilizing-predictions rule would have
    stopped; None if it never did), ``final_labels``, ``final_accuracy``, ``labels_saved`` and
    ``accuracy_given_up`` (against spending the whole budget). A list whose repr is a table."""

    def __init__(self, rows: list[dict[str, Any]], *, window: int, threshold: float) -> None:
        super().__init__(rows)
        self.window, self.threshold = window, threshold

    def __repr__(self) -> str:
        head = (
            f"stabilizing predictions (kappa of the last {self.window} models >= "
            f"{self.threshold:g}), against the whole budget:"
        )
        lines = [head]
        for r in self:
            who = f"  {r['strategy']} seed {r['seed']}: "
            if r["stop_labels"] is None:
                lines.append(who + f"never stable up to {r['final_labels']} labels")
                continue
            lines.append(
                who + f"stop at {r['stop_labels']} labels (accuracy {r['stop_accuracy']:.3f}); "
                f"{r['labels_saved']} labels saved, {r['accuracy_given_up']:.3f} accuracy "
                f"given up (final {r['final_accuracy']:.3f} at {r['final_labels']})"
            )
        flat = [r for r in self if r.get("plateau_labels") is not None]
        lines.append(
            f"held-out plateau: {len(flat)} of {len(self)} runs flattened"
            + (
                f", median at {int(np.median([r['plateau_labels'] for r in flat]))} labels"
                if flat
                else ""
            )
        )
        return "\n".join(lines)

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per strategy and seed."""
        return pandas("StopReport.to_frame").DataFrame(list(self))
