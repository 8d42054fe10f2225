"""Simulated-oracle loops: compare strategies on data whose labels are known.

The loop pretends not to know the labels: it queries with a :class:`~dal_widgets.Session`,
answers with the known targets (optionally with label noise), retrains and evaluates on the
held-out split, round after round, exactly as a person's session would run.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, check_real, param_error
from dal_widgets._grid import Cell, cell_key, check_executor, describe, error_line, run_grid
from dal_widgets._repr import (
    MISSING,
    fmt_fraction,
    fmt_spread,
    html_table,
    quartiles,
)
from dal_widgets._sim_tables import (
    STAGES,
    LabelsToReach,
    RoundSeconds,
    StopReport,
    pandas,
    seeds_text,
)
from dal_widgets.data import Dataset

__all__ = [
    "LabelsToReach",
    "RoundSeconds",
    "SimulationResult",
    "StopReport",
    "balanced_initial",
    "simulate",
]


def balanced_initial(
    targets: np.ndarray, n: int, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions of ``n`` samples spread as evenly as possible over the classes.

    The papers' protocol (e.g. 20 balanced initial labels on MNIST). Classes with too few
    samples give what they have; the remainder is drawn from the rest at random.
    """
    per_class = np.full(n_classes, n // n_classes)
    per_class[rng.choice(n_classes, size=n % n_classes, replace=False)] += 1
    chosen = []
    for c in range(n_classes):  # a loop over classes, not samples
        members = np.flatnonzero(targets == c)
        take = min(per_class[c], members.size)
        chosen.append(rng.choice(members, size=take, replace=False))
    picked = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    if picked.size < n:
        rest = np.setdiff1d(np.arange(targets.size), picked)
        picked = np.concatenate([picked, rng.choice(rest, size=n - picked.size, replace=False)])
    return picked.astype(np.int64)


@dataclass
class SimulationResult:
    """The rows of a simulation, with learning curves and summaries computed from them.

    Each row: ``strategy``, ``seed``, ``round``, ``labels``, ``accuracy``, ``train_s``,
    ``infer_s``, ``select_s``, ``seconds`` (the round's wall time).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    budget: int = 0
    initial: int = 0
    #: Cells (strategy, seed) that raised on an executor: ``strategy``, ``seed``, ``error``
    #: (the traceback) and the ``records`` of the rounds before (not in ``records``: a
    #: curve cut short would skew the comparison). The other cells ran on.
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per (strategy, seed, round)."""
        return [dict(r) for r in self.records]

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r["strategy"] for r in self.records))

    def _matrix(self, strategy: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(strategy)
        labels = np.array(sorted({r["labels"] for r in rows}))
        seeds = sorted({r["seed"] for r in rows})
        acc = np.full((len(seeds), labels.size), np.nan)
        for r in rows:
            acc[seeds.index(r["seed"]), np.searchsorted(labels, r["labels"])] = r["accuracy"]
        return labels, acc

    def curve(self, strategy: str) -> dict[str, np.ndarray]:
        """Learning curve over seeds: ``labels``, ``mean``, ``std``, ``q25``, ``median``, ``q75``."""
        labels, acc = self._matrix(strategy)
        return {
            "labels": labels,
            "mean": np.nanmean(acc, axis=0),
            "std": np.nanstd(acc, axis=0),
            "q25": np.nanquantile(acc, 0.25, axis=0),
            "median": np.nanmedian(acc, axis=0),
            "q75": np.nanquantile(acc, 0.75, axis=0),
        }

    def aubc(self, strategy: str) -> float:
        """Area under the budget curve, normalized to [0, 1]: the mean accuracy over the budget.

        Trapezoids of accuracy against the number of labels, divided by the label range, per
        seed, then averaged over seeds.
        """
        labels, acc = self._matrix(strategy)
        if labels.size < 2:
            return float(np.nanmean(acc))
        width = labels[-1] - labels[0]
        areas = ((acc[:, 1:] + acc[:, :-1]) / 2 * np.diff(labels)).sum(axis=1) / width
        return float(np.nanmean(areas))

    def labels_to_reach(self, accuracy: float) -> LabelsToReach:
        """Per strategy and seed, the first number of labels at which ``accuracy`` was reached.

        Returns
        -------
        LabelsToReach
            A dict of strategy -> list (one int or None per seed, seeds in increasing order)
            whose repr is the median and IQR per strategy; ``to_frame()`` for a DataFrame.
        """
        check_real(accuracy, "accuracy", "SimulationResult.labels_to_reach", lo=0.0, hi=1.0)
        out = LabelsToReach(accuracy=float(accuracy), budget=self.budget)
        for s in self.strategies:
            labels, acc = self._matrix(s)
            hits = []
            for row in acc:
                reached = np.flatnonzero(row >= accuracy)
                hits.append(int(labels[reached[0]]) if reached.size else None)
            out[s] = hits
        return out

    def versus(self, baseline: str = "random", *, resamples: int = 2000) -> dict[str, dict]:
        """Each strategy against ``baseline``, paired by seed (both met the same initial
        labels and oracle): ``seeds`` compared, ``wins`` (seeds where its AUBC beats the
        baseline's), ``aubc_diff`` (mean difference) with a 95% bootstrap interval
        (``ci_low``, ``ci_high``; None for one seed), and ``wins_by_labels`` (labels -> share
        of seeds where its accuracy beats the baseline's there)."""
        if baseline not in self.strategies:
            raise KeyError(
                f"SimulationResult.versus: {baseline!r} was not run; it ran {self.strategies}."
            )
        base = self._per_seed(baseline)
        out: dict[str, dict] = {}
        for name in self.strategies:
            if name == baseline:
                continue
            mine = self._per_seed(name)
            seeds = sorted(set(mine) & set(base))
            diffs = np.array([mine[k][0] - base[k][0] for k in seeds])
            row: dict[str, Any] = {"seeds": len(seeds), "wins": int((diffs > 0).sum())}
            row["aubc_diff"] = float(diffs.mean()) if diffs.size else None
            row["ci_low"] = row["ci_high"] = None
            if diffs.size > 1:
                rng = np.random.default_rng(0)
                means = diffs[rng.integers(0, diffs.size, (resamples, diffs.size))].mean(1)
                row["ci_low"], row["ci_high"] = (
                    float(q) for q in np.quantile(means, [0.025, 0.975])
                )
            by_labels: dict[int, float] = {}
            for k in seeds:
                for labels, acc in mine[k][1].items():
                    if labels in base[k][1]:
                        by_labels.setdefault(labels, 0.0)
                        by_labels[labels] += (acc > base[k][1][labels]) / len(seeds)
            row["wins_by_labels"] = dict(sorted(by_labels.items()))
            out[name] = row
        return out

    def _per_seed(self, strategy: str) -> dict[int, tuple[float, dict[int, float]]]:
        """seed -> (AUBC of that seed's curve, labels -> accuracy)."""
        out = {}
        for seed in dict.fromkeys(r["seed"] for r in self.records if r["strategy"] == strategy):
            rows = sorted(
                (r for r in self.records if r["strategy"] == strategy and r["seed"] == seed),
                key=lambda r: r["labels"],
            )
            x = np.array([r["labels"] for r in rows], dtype=np.float64)
            y = np.array([r["accuracy"] for r in rows], dtype=np.float64)
            span = x[-1] - x[0]
            aubc = float(np.trapezoid(y, x) / span) if span > 0 else float(y[-1])
            out[seed] = (aubc, {int(a): float(b) for a, b in zip(x, y, strict=True)})
        return out

    def stopping(
        self, *, window: int = 3, threshold: float = 0.99, min_gain: float = 0.005
    ) -> StopReport:
        """Where the stabilizing-predictions rule (see :mod:`dal_widgets.stopping`) would
        have stopped each run, the labels that saves and the accuracy it gives up against
        the whole budget; and where the held-out plateau rule would have (``plateau_labels``,
        ``plateau_accuracy``: less than ``min_gain`` over ``window`` rounds). Reads each
        record's ``kappa`` (its model against the one before, on a fixed stop set of the pool)
        and ``accuracy``."""
        from dal_widgets.stopping import plateau_stop, stabilizing_stop

        rows = []
        for name in self.strategies:
            for seed in dict.fromkeys(r["seed"] for r in self.records if r["strategy"] == name):
                runs = sorted(
                    (r for r in self.records if r["strategy"] == name and r["seed"] == seed),
                    key=lambda r: r["round"],
                )
                compared = [r for r in runs if r.get("kappa") is not None]
                at = stabilizing_stop(
                    [r["kappa"] for r in compared], window=window, threshold=threshold
                )
                final = runs[-1]
                row = {"strategy": name, "seed": seed, "stop_labels": None, "stop_accuracy": None}
                row |= {"final_labels": final["labels"], "final_accuracy": final["accuracy"]}
                row |= {"labels_saved": 0, "accuracy_given_up": 0.0}
                flat = plateau_stop([r["accuracy"] for r in runs], window=window, min_gain=min_gain)
                row["plateau_labels"] = None if flat is None else runs[flat]["labels"]
                row["plateau_accuracy"] = None if flat is None else runs[flat]["accuracy"]
                if at is not None:
                    hit = compared[at]
                    row |= {"stop_labels": hit["labels"], "stop_accuracy": hit["accuracy"]}
                    row["labels_saved"] = final["labels"] - hit["labels"]
                    row["accuracy_given_up"] = final["accuracy"] - hit["accuracy"]
                rows.append(row)
        return StopReport(rows, window=window, threshold=threshold)

    def seconds(self, strategy: str) -> RoundSeconds:
        """Mean seconds per round spent in training, inference and selection.

        Returns
        -------
        RoundSeconds
            A dict with ``train_s``, ``infer_s``, ``select_s`` and ``seconds`` (the whole
            round), whose repr rounds them with units; ``to_frame()`` for a DataFrame.
        """
        rows = self._rows(strategy)
        means = {k: float(np.mean([r[k] for r in rows])) for k in STAGES}
        return RoundSeconds(means, strategy=strategy, rounds=len(rows))

    def to_frame(self) -> Any:
        """The records as a pandas DataFrame, one row per (strategy, seed, round)."""
        return pandas("SimulationResult.to_frame").DataFrame(self.to_records())

    def _final(self, strategy: str) -> tuple[list[float], list[int]]:
        """The accuracy and labels of each seed's last round, seeds in increasing order."""
        last: dict[int, dict[str, Any]] = {}
        for r in self._rows(strategy):
            if r["seed"] not in last or r["round"] >= last[r["seed"]]["round"]:
                last[r["seed"]] = r
        seeds = sorted(last)
        return [float(last[s]["accuracy"]) for s in seeds], [int(last[s]["labels"]) for s in seeds]

    def _summary(self) -> tuple[str, list[dict[str, str]]]:
        """The head line, and per strategy its final accuracy (median, IQR, both), the
        labels it ended at and its AUBC, as text."""
        strategies = self.strategies
        head = [
            f"{len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'}",
            seeds_text(len({r["seed"] for r in self.records})),
        ]
        if self.budget:
            head.append(f"{self.initial} initial -> budget {self.budget} labels")
        head.append(f"{len(self.records)} rounds")
        rows = []
        for s in strategies:
            accs, ends = self._final(s)
            q = quartiles(accs)
            iqr = MISSING if q is None or len(accs) == 1 else "-".join(map(fmt_fraction, q[::2]))
            with warnings.catch_warnings():  # a curve of NaN only: the AUBC is missing, no more
                warnings.simplefilter("ignore", RuntimeWarning)
                aubc = self.aubc(s)
            rows.append(
                {
                    "strategy": s,
                    "median": MISSING if q is None else fmt_fraction(q[1]),
                    "iqr": iqr,
                    "spread": fmt_spread(accs, fmt_fraction),
                    "labels": f"{min(ends)}"
                    if min(ends) == max(ends)
                    else f"{min(ends)}-{max(ends)}",
                    "aubc": fmt_fraction(aubc),
                }
            )
        return ", ".join(head), rows

    def __repr__(self) -> str:
        """The run in a few lines: strategies, seeds, budget and each strategy's final
        held-out accuracy (median over seeds, with its IQR)."""
        failed = self._failed_text()
        if not self.records:
            budget = f"; budget {self.budget} labels" if self.budget else ""
            return f"SimulationResult(no records{budget})" + (f"\n{failed}" if failed else "")
        head, rows = self._summary()
        n_seeds = len({r["seed"] for r in self.records})
        width = max(len(row["strategy"]) for row in rows)
        of = " (1 seed):" if n_seeds == 1 else f", median of {n_seeds} seeds (IQR):"
        lines = [f"SimulationResult({head})", f"final accuracy{of}"]
        lines += [
            f"  {r['strategy']:<{width}}  {r['spread']} at {r['labels']} labels" for r in rows
        ]
        if "random" in self.strategies and len(self.strategies) > 1:
            lines.append("against random, paired by seed (AUBC):")
            for name, v in self.versus("random").items():
                ci = (
                    ""
                    if v["ci_low"] is None
                    else f", 95% CI {v['ci_low']:+.3f} to {v['ci_high']:+.3f}"
                )
                lines.append(
                    f"  {name:<{width}}  beats it in {v['wins']} of {v['seeds']} seeds, "
                    f"mean difference {v['aubc_diff']:+.3f}{ci}"
                )
        return "\n".join(lines + ([failed] if failed else []))

    def _failed_text(self) -> str:
        """``2 cells failed (tracebacks in .failures):`` and each cell's last error line."""
        if not self.failures:
            return ""
        n = len(self.failures)
        lines = [f"{n} cell{'s' if n > 1 else ''} failed (tracebacks in .failures):"]
        for f in self.failures[:5]:
            lines.append(f"  {f['strategy']} seed {f['seed']}: {error_line(f['error'])}")
        if n > 5:
            lines.append(f"  ... and {n - 5} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A small table for notebooks: final accuracy (median, IQR), labels and AUBC per
        strategy; every name is escaped."""
        if not self.records:
            return html_table([], [], repr(self))
        head, rows = self._summary()
        header = ["strategy", "final accuracy (median)", "IQR", "labels", "AUBC"]
        keys = ["strategy", "median", "iqr", "labels", "aubc"]
        failed = self._failed_text().replace("\n", " ")
        caption = f"SimulationResult: {head}" + (f"; {failed}" if failed else "")
        return html_table(header, [[r[k] for k in keys] for r in rows], caption)

    def _rows(self, strategy: str) -> list[dict[str, Any]]:
        rows = [r for r in self.records if r["strategy"] == strategy]
        if not rows:
            raise KeyError(f"No records for strategy {strategy!r}; have {self.strategies}.")
        return rows

    def table(self) -> str:
        """The learning curves as a text table: labels by strategy (mean accuracy, +- std)."""
        strategies = self.strategies
        curves = {s: self.curve(s) for s in strategies}
        labels = sorted({int(v) for c in curves.values() for v in c["labels"]})
        multi = len({r["seed"] for r in self.records}) > 1
        width = max(14 if multi else 9, *(len(s) for s in strategies))
        lines = ["labels " + " ".join(f"{s:>{width}}" for s in strategies)]
        for n in labels:
            cells = []
            for s in strategies:
                c = curves[s]
                hit = np.flatnonzero(c["labels"] == n)
                if hit.size == 0:
                    cells.append(f"{'':>{width}}")
                    continue
                i = hit[0]
                text = f"{c['mean'][i]:.3f}" + (f" +- {c['std'][i]:.3f}" if multi else "")
                cells.append(f"{text:>{width}}")
            lines.append(f"{n:>6} " + " ".join(cells))
        lines.append("  AUBC " + " ".join(f"{self.aubc(s):>{width}.3f}" for s in strategies))
        return "\n".join(lines)


def simulate(
    dataset: Dataset,
    strategies: Sequence[str] = ("random", "entropy"),
    initial: int = 20,
    batch: int = 10,
    budget: int = 120,
    seeds: int | Sequence[int] = 3,
    *,
    baseline: str | None = "random",
    noise: float = 0.0,
    model: Any = "auto",
    device: Any = "auto",
    train_config: Any = None,
    encoder: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    executor: Any = None,
    max_workers: int | None = None,
    results: Any = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> SimulationResult:
    """Run simulated-oracle active learning for each strategy and seed.

    Parameters
    ----------
    dataset : Dataset
        Needs known ``targets`` (the oracle) and a held-out split (for accuracy).
    strategies : sequence of str
        Names from ``dal_widgets.strategies.available()``.
    initial : int
        Labels before the first query, balanced over the classes; the same for every
        strategy at a given seed, so curves start together. 0 is the cold-start protocol: no
        labels to begin with, the first ``batch`` are the strategy's own picks (its
        ``cold_start`` stand-in's when it needs a model), as a user without labels starts.
    batch : int
        Labels per round.
    budget : int
        Total labels at the end (the last batch is cut to fit).
    seeds : int or sequence of int
        How many seeds (0, 1, ...) or which. Three by default: one seed can make a strategy
        look better or worse than random by chance (CDALBench, arXiv 2408.00426).
    baseline : str or None
        A strategy run beside the others as the arm to beat (added when missing; None leaves
        it out). :meth:`SimulationResult.versus` compares each strategy with it, seed by seed.
    noise : float
        Fraction of oracle answers replaced by a random other class (label noise).
    encoder : Encoder, optional
        Run every strategy on an encoder's embeddings with a head (as ``Session(encoder=)``);
        the pool is embedded once into the user cache folder and reused by every run.
    progress : callable, optional
        Called with each new record (for progress displays): serially, as each round ends;
        on an executor, as each cell ends.
    stop : threading.Event, optional
        Set it to end the run after the current round; the result holds what finished. On
        an executor no new cell starts; running cells end after their round in processes
        and thread pools, run to their end on other executors, and are cancelled on Ray.
    executor : None, "processes", "ray" or concurrent.futures.Executor
        Where the cells (one per strategy and seed) run. None: one after another in this
        process (an exception ends the run). ``"processes"``: local processes (spawn; torch
        threads per worker set so the workers share the cores). ``"ray"``: the current Ray
        connection, else ``ray.init()`` (which follows ``RAY_ADDRESS``). On an executor, a
        cell that raises is kept in ``result.failures`` with its traceback, the others run
        on, and a warning says how many failed (unless ``on_cell`` is given). A cell gives
        the same curve wherever it runs at the same torch thread count (threads of one
        process share torch's global generator, so their fits take turns). The dataset,
        model, train config and encoder are pickled to the workers; in ``"processes"`` their
        code must be importable there (not defined in the notebook). With an encoder, the
        pool is embedded once in this process before the cells start.
    max_workers : int, optional
        Cells running at once (default: the local cores; on Ray, the cluster's CPUs).
    results : str or Path, optional
        A JSON-lines file that makes the grid resumable: each finished cell is appended,
        keyed by a hash of its configuration (dataset fingerprint, strategy, seed, budget,
        model, train config, encoder, package version), and a rerun takes the cells the
        file has instead of running them again.
    on_cell : callable, optional
        Called as cells start and end, with the cell's ``strategy``, ``seed`` and ``state``
        (``"running"``, ``"done"``, ``"resumed"`` from the results file, ``"failed"`` with
        its ``error``, ``"stopped"``) and the
        grid's counts: ``done``, ``running``, ``failed``, ``resumed``, ``total``.

    Returns
    -------
    SimulationResult
    """
    from dal_widgets import strategies as registry

    where = "simulate"
    if not isinstance(dataset, Dataset):
        raise param_error(
            "dataset", where, "a Dataset from dal_widgets.datasets", dataset, TypeError
        )
    if dataset.targets is None:
        raise ValueError(
            f"{where} needs a dataset with known labels (targets) to act as the oracle; {dataset.name!r} has none."
        )
    if not dataset.has_holdout:
        raise ValueError(
            f"{where} needs a held-out split to measure accuracy; load {dataset.name!r} with holdout=0.2."
        )
    if isinstance(strategies, str):
        strategies = [strategies]
    strategies = list(strategies)
    if baseline is not None:
        baseline = registry.get(baseline).name
        if strategies and baseline not in strategies:
            strategies = [baseline, *strategies]
    if not strategies:
        raise param_error("strategies", where, "a non-empty list of strategy names", strategies)
    for s in strategies:
        registry.get(s)
    initial = check_int(initial, "initial", where, lo=0, hi=len(dataset) - 1)
    budget = check_int(budget, "budget", where, lo=max(initial, 1), hi=len(dataset))
    batch = check_int(batch, "batch", where, lo=1, hi=len(dataset))
    noise = check_real(noise, "noise", where, lo=0.0, hi=1.0, hi_open=True)
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seed_list = list(range(check_int(seeds, "seeds", where, lo=1, hi=1000)))
    else:
        seed_list = [check_int(s, "seeds[i]", where, lo=0) for s in seeds]  # type: ignore[union-attr]
        if not seed_list:
            raise param_error(
                "seeds", where, "a positive count or a non-empty list of seeds", seeds
            )
    max_workers = check_executor(executor, max_workers, where)
    if encoder is not None and not getattr(encoder, "ready", True):
        encoder.pretrain(device)  # a self-supervised encoder: once, before any cell
    result = SimulationResult(budget=budget, initial=initial)
    shared = {
        "dataset": dataset,
        "model": model,
        "device": device,
        "train_config": train_config,
        "encoder": encoder,
        "batch": batch,
        "budget": budget,
    }
    # Cells go seed by seed: one seed's oracle serves each of its strategies, one at a time.
    oracle = functools.lru_cache(maxsize=1)(
        functools.partial(_oracle, dataset, initial=initial, noise=noise)
    )
    cells = [Cell(name, seed, oracle) for seed in seed_list for name in strategies]
    configs: dict[str, dict[str, Any]] = {}
    if results is not None:  # keys only for a results file: describing a model costs a copy
        from dal_widgets._encoded import default_config

        # No train config: the sessions' default, which changes with the package, by value.
        default = default_config(encoder, dataset.multi_label)
        same = {
            k: describe(default if k == "train_config" and v is None else v)
            for k, v in shared.items()
            if k != "dataset"
        }
        same.update(dataset=_data_key(dataset), initial=initial, noise=noise)
        for cell in cells:
            config = {**same, "strategy": cell.strategy, "seed": cell.seed}
            cell.key = cell_key(config)
            configs[cell.key] = config
    return run_grid(
        cells,
        shared,
        configs,
        result,
        executor=executor,
        max_workers=max_workers,
        results=results,
        progress=progress,
        on_cell=on_cell,
        stop=stop,
        where=where,
    )


def _data_key(dataset: Dataset) -> dict[str, Any]:
    """What identifies a dataset for a results file: its fingerprint (ids and content), and
    the oracle's answers, the classes and the held-out split, which the fingerprint leaves out."""
    return {
        "fingerprint": dataset.fingerprint,
        "targets": describe(dataset.targets),
        "classes": list(dataset.classes),
        "eval": describe([dataset.y_eval, dataset.eval_ids, dataset.n_eval]),
    }


def _oracle(
    dataset: Dataset, seed: int, *, initial: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """A seed's initial labels (balanced over the classes) and the oracle's answers (noisy
    answers are fixed per seed, so every strategy meets the same oracle)."""
    targets = dataset.targets
    assert targets is not None
    rng = np.random.default_rng([seed, 7])
    proxy = targets.argmax(1) if targets.ndim == 2 else targets  # multi-label: first class
    start = balanced_initial(proxy, initial, len(dataset.classes), rng)
    answers = targets.copy()
    n_pool = len(targets)
    if noise > 0 and targets.ndim == 2:  # multi-label: a noisy answer gets one class toggled
        flip = np.flatnonzero(rng.random(n_pool) < noise)
        cls = rng.integers(0, len(dataset.classes), size=flip.size)
        answers[flip, cls] ^= 1
    elif noise > 0:
        flipped = rng.random(n_pool) < noise
        shift = rng.integers(1, len(dataset.classes), size=n_pool)
        answers[flipped] = (targets[flipped] + shift[flipped]) % len(dataset.classes)
    return start, answers


def _query_and_answer(session: Any, answers: np.ndarray, n: int) -> tuple[float, float]:
    """One query of ``n``, answered by the oracle; the query's inference and selection time."""
    ids = session.query(n)
    row = session.store.rounds()[-1]
    session.label(ids, answers[session.dataset.positions(ids)], source="oracle")
    return row.infer_s or 0.0, row.select_s or 0.0


def _run_one(
    session: Any,
    start: np.ndarray,
    answers: np.ndarray,
    batch: int,
    budget: int,
    result: SimulationResult,
    progress: Callable[[dict[str, Any]], None] | None,
    stop: threading.Event | None,
) -> None:
    """One strategy and seed: initial labels, then query, answer, train, evaluate until the budget."""
    dataset = session.dataset
    name = session.strategy
    seed = session.seed
    from dal_widgets.stopping import StopMonitor

    t0 = time.perf_counter()
    monitor = StopMonitor(session, stop_set=max(10, min(1000, len(dataset))))
    rnd = 0
    infer_s = select_s = 0.0
    if start.size:
        session.label(dataset.ids[start].tolist(), answers[start], source="oracle")
    else:  # the cold-start protocol: the strategy picks the first batch from nothing
        infer_s, select_s = _query_and_answer(session, answers, min(batch, budget))
    while True:
        session.train(block=True)  # the session evaluates each new model (its policy)
        acc = session.evaluation["accuracy"]
        record = {
            "strategy": name,
            "seed": seed,
            "round": rnd,
            "labels": len(session.labels),
            "accuracy": acc,
            "train_s": session.model_version.seconds if session.model_version else math.nan,
            "infer_s": infer_s,
            "select_s": select_s,
            "seconds": time.perf_counter() - t0,
            # this model against the one before, on the stop set (None for the first)
            "kappa": monitor.kappas[-1] if len(monitor.kappas) == rnd and rnd else None,
        }
        result.records.append(record)
        if progress is not None:
            progress(dict(record))
        left = budget - len(session.labels)
        if left <= 0 or (stop is not None and stop.is_set()):
            break
        t0 = time.perf_counter()
        infer_s, select_s = _query_and_answer(session, answers, min(batch, left))
        rnd += 1
