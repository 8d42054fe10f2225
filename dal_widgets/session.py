"""The headless orchestrator: query -> label -> train -> evaluate, with events for views.

A :class:`Session` owns a dataset, a label store, a strategy name and the newest trained model.
It never imports Jupyter: widgets subscribe to its events with :meth:`Session.on`.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dal_widgets import strategies as _strategies
from dal_widgets._checks import check_choice, check_int, check_real, param_error, short_repr
from dal_widgets.data import Dataset
from dal_widgets.store import LabelStore, StoreClosedError, StoreError
from dal_widgets.training import (
    INFERABLE,
    MODEL_ARRAYS,
    ModelVersion,
    PoolArrays,
    Standardize,
    TrainConfig,
    Trainer,
    TrainingSet,
    default_model,
    predict,
    resolve_device,
)

__all__ = ["EVENTS", "ModelVersion", "Session"]

#: Events a session emits, with the keyword arguments observers receive.
EVENTS = {
    "labeled": "ids, labels, source",
    "undone": "ids",
    "marked": "ids, field, value",
    "queried": "ids, round, strategy",
    "train_started": "version, n_labels",
    "train_progress": "progress (dict)",
    "trained": "version (ModelVersion)",
    "train_failed": "error (str, with traceback)",
    "evaluated": "result (dict)",
    "class_added": "name",
    "map_changed": "projection (Projection)",
}


class Session:
    """An active-learning session over one dataset.

    Parameters
    ----------
    dataset : Dataset
        From :mod:`dal_widgets.datasets`.
    strategy : str
        A name from ``dal_widgets.strategies.available()``.
    model : "auto", torch.nn.Module or callable
        ``"auto"`` sizes a default model from the data (an MLP for tabular data, texts and 8x8
        images, a small CNN with dropout for larger images). A module is copied fresh for every
        fit (its initial weights are the starting point each time); a callable
        ``model(input_shape, n_classes)`` builds a new one per fit. Embeddings are the input
        of the model's ``classifier`` attribute, or of its last ``nn.Linear``.
    store : str or path
        The SQLite label store (created if missing, resumed if present). ``":memory:"`` keeps
        labels in memory only.
    seed : int
        Seeds queries (per round) and fits (per labeled-set size): the same seed, labels and
        device give the same picks and, on the CPU, the same model.
    device : str or torch.device
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    train_config : TrainConfig, optional
        Steps, batch size, learning rate, MC passes (see :class:`TrainConfig`).
    cold_start : str
        The strategy used while no model exists yet, when the chosen one needs model outputs.
    annotator : str, optional
        Recorded with every label (default: the OS user name).
    read_only : bool
        Open an existing store only to look (labels, history, export), never to write: for a
        store another process is labeling in. Labeling, querying and training then raise.
    """

    def __init__(
        self,
        dataset: Dataset,
        strategy: str = "entropy",
        model: Any = "auto",
        store: Any = "labels.db",
        seed: int = 0,
        device: Any = "auto",
        *,
        train_config: TrainConfig | None = None,
        cold_start: str = "random",
        retrain: str | int = "batch",
        annotator: str | None = None,
        read_only: bool = False,
    ) -> None:
        where = "Session"
        if not isinstance(dataset, Dataset):
            raise param_error(
                "dataset", where, "a Dataset from dal_widgets.datasets", dataset, TypeError
            )
        if len(dataset) == 0:
            raise param_error("dataset", where, "a non-empty Dataset", dataset)
        self.dataset = dataset
        self.seed = check_int(seed, "seed", where, lo=0)
        self.strategy = strategy  # validated by the property setter
        self.cold_start = cold_start
        _strategies.get(cold_start)
        self.device = resolve_device(device, where)
        self.train_config = (train_config or TrainConfig()).validated(where + ".train_config")
        if dataset.multi_label and self.train_config.pseudo_labels > 0:
            raise ValueError(
                f"{where}: TrainConfig.pseudo_labels works on single-label data only; this "
                f"dataset is multi-label. Set pseudo_labels=0 (got {self.train_config.pseudo_labels})."
            )
        self._model_spec = self._check_model(model, where)
        self._pool_stats: Standardize | None = None
        if not isinstance(read_only, bool):
            raise param_error("read_only", where, "True or False", read_only, TypeError)
        if isinstance(store, LabelStore):
            self.store = store
        elif store is None or isinstance(store, (str, os.PathLike)):
            self.store = LabelStore(
                ":memory:" if store is None else store,
                fingerprint=dataset.fingerprint,
                classes=dataset.classes,
                dataset_name=dataset.name,
                annotator=annotator,
                multi_label=dataset.multi_label,
                read_only=read_only,
            )
        else:
            raise param_error(
                "store",
                where,
                "a file path (str or os.PathLike), ':memory:', None or a LabelStore",
                store,
                TypeError,
            )
        self.multi_label = dataset.multi_label
        #: The newest model's arrays over the pool, computed once per model version.
        self.arrays = PoolArrays(
            dataset.X,
            multi_label=dataset.multi_label,
            config=self.train_config,
            device=self.device,
            seed=self.seed,
        )
        self._observers: dict[str, list[Callable[..., Any]]] = {}
        self.observer_errors: list[str] = []
        self.last_query: dict[str, Any] | None = None
        self._query_lock = threading.Lock()
        self._trainer = Trainer(
            data=self._training_data,
            new_model=self._new_model,
            config=self.train_config,
            device=self.device,
            seed=self.seed,
            emit=self._on_trainer_event,
        )
        self.retrain = retrain  # validated by the property setter
        #: Evaluate each new model on the held-out split (when the dataset has one), so the
        #: learning curve grows whether or not a view is open.
        self.evaluate_after_fit = True
        #: The newest :meth:`evaluate` result (None before the first).
        self.evaluation: dict[str, Any] | None = None
        self._maps: dict[str, Any] = {}
        self._new_since_request = 0
        self._label_epoch = 0  # bumped by every change of the labeled set
        self._why: dict[Any, dict[str, Any]] = {}
        # Query batches not finished yet (for retrain="batch"); the last one survives a restart.
        self._open_batches: list[set[Any]] = []
        if self.pending:
            self._open_batches.append(set(self.pending))
        # When the store closes (close(), or a new Session on the same file takes it over),
        # this session stops its worker and lets go of its model and pool-sized arrays. The
        # store holds only a weak reference, so it never keeps the session alive.
        ref = weakref.ref(self)

        def release(reason: str) -> None:
            session = ref()
            if session is not None:
                session._release()

        self.store.add_close_callback(release)

    # ------------------------------------------------------------------ configuration
    @property
    def strategy(self) -> str:
        """The strategy used by :meth:`query` (settable; validated against the registry)."""
        return self._strategy

    @strategy.setter
    def strategy(self, name: str) -> None:
        self._strategy = _strategies.get(name).name

    @property
    def retrain(self) -> str | int:
        """When training starts by itself.

        ``"batch"`` (the default): when every sample of a query batch is labeled or skipped;
        an int k: after every k new labels; ``"manual"``: only on :meth:`train`.
        """
        return self._retrain

    @retrain.setter
    def retrain(self, value: str | int) -> None:
        if isinstance(value, str):
            check_choice(value, "retrain", "Session", ["batch", "manual"])
        else:
            check_int(value, "retrain", "Session", lo=1)
        self._retrain = value

    def _after_labels(self, ids: list[Any]) -> None:
        """Apply the retrain policy after labels or skips were committed."""
        self._label_epoch += 1
        self._new_since_request += len(ids)
        due = False
        if self._retrain == "batch":
            done = set(self.store.labels) | self.store.marked("skip")
            finished = [b for b in self._open_batches if b <= done]
            if finished:
                self._open_batches = [b for b in self._open_batches if not b <= done]
                due = True
        elif isinstance(self._retrain, int):
            due = self._new_since_request >= self._retrain
        if due:
            self._new_since_request = 0
            self._trainer.request(self._label_epoch)

    @property
    def classes(self) -> list[str]:
        """The class list (the store's: it may have grown with :meth:`add_class`)."""
        return self.store.classes

    @staticmethod
    def _check_model(model: Any, where: str) -> Any:
        if isinstance(model, str):
            check_choice(model, "model", where, ["auto"])
            return model
        if isinstance(model, nn.Module):
            return copy.deepcopy(model)
        if callable(model):
            return model
        raise param_error(
            "model",
            where,
            "'auto', a torch.nn.Module or a callable(input_shape, n_classes)",
            model,
            TypeError,
        )

    def _stats(self) -> Standardize | None:
        """The pool's per-feature statistics for the default tabular model, computed once."""
        if self.dataset.kind != "tabular":
            return None
        if self._pool_stats is None:
            self._pool_stats = Standardize.from_inputs(self.dataset.X)
        return self._pool_stats

    def _new_model(self) -> nn.Module:
        shape = tuple(self.dataset.X.shape[1:])
        n_classes = len(self.classes)
        if self._model_spec == "auto":
            head = (
                self.train_config.loss_head or "loss_pred" in _strategies.get(self.strategy).needs
            )
            return default_model(
                shape, n_classes, self.dataset.kind, loss_head=head, standardize=self._stats()
            )
        if isinstance(self._model_spec, nn.Module):
            return copy.deepcopy(self._model_spec)
        model = self._model_spec(shape, n_classes)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"The model factory given to Session returned {short_repr(model)}, not a torch.nn.Module."
            )
        return model

    # ------------------------------------------------------------------ events
    def on(self, event: str, callback: Callable[..., Any]) -> Callable[[], None]:
        """Call ``callback(**payload)`` on ``event`` (see :data:`EVENTS`); returns an unsubscribe function.

        Callbacks may run on the training thread. One that raises is recorded in
        ``observer_errors`` and does not stop the others.
        """
        check_choice(event, "event", "Session.on", EVENTS)
        self._observers.setdefault(event, []).append(callback)

        def unsubscribe() -> None:
            try:
                self._observers[event].remove(callback)
            except ValueError:
                pass

        return unsubscribe

    def _emit(self, event: str, **payload: Any) -> None:
        for callback in list(self._observers.get(event, ())):
            try:
                callback(**payload)
            except Exception:  # noqa: BLE001 (an observer's bug must not break the session)
                self.observer_errors.append(traceback.format_exc())

    # ------------------------------------------------------------------ labels
    @property
    def labels(self) -> dict[Any, str]:
        """Current labels: sample id -> class name, as stored."""
        return self.store.labels

    @property
    def round(self) -> int:
        """The current round (one per query)."""
        return self.store.round

    def _labeled_mask(self, include_skipped: bool = True) -> np.ndarray:
        mask = np.zeros(len(self.dataset), dtype=bool)
        ids = list(self.store.labels)
        if include_skipped:
            ids += list(self.store.marked("skip"))
        if ids:
            mask[self.dataset.positions(ids)] = True
        return mask

    def _ids_arg(self, ids: Any, where: str) -> list[Any]:
        if isinstance(ids, (str, int, np.integer)) and not isinstance(ids, bool):
            ids = [ids]
        expected = "a sample id or a 1-D sequence of sample ids"
        if (
            ids is None
            or isinstance(ids, (bool, float, dict))
            or (isinstance(ids, np.ndarray) and ids.ndim != 1)
        ):
            raise param_error("ids", where, expected, ids, TypeError)
        try:
            ids_list = list(ids)
        except TypeError:
            raise param_error("ids", where, expected, ids, TypeError) from None
        if not ids_list:
            raise param_error("ids", where, "at least one sample id", ids)
        if any(isinstance(i, (list, tuple, set, np.ndarray)) for i in ids_list):
            raise param_error("ids", where, expected, ids, TypeError)
        self.dataset.positions(ids_list, where=where)  # KeyError naming unknown ids
        return [self.dataset.python_id(i) for i in ids_list]

    def _class_name(self, v: Any, where: str) -> str:
        classes = self.classes
        if isinstance(v, str) and v in classes:
            return v
        if (
            isinstance(v, (int, np.integer))
            and not isinstance(v, bool)
            and 0 <= int(v) < len(classes)
        ):
            return classes[int(v)]
        raise ValueError(
            f"The 'labels' parameter of {where} must hold class names from {classes[:10]}"
            f"{'...' if len(classes) > 10 else ''} or integer indices in [0, {len(classes) - 1}]. "
            f"Got {short_repr(v)} instead."
        )

    def _label_sets(self, labels: Any, n: int, where: str) -> list[tuple[str, ...]]:
        """Multi-label: one set of classes per id, from names, indices or 0/1 rows.

        A single name or index, or one collection of them when its length differs from the
        number of ids, applies to every id; a sequence of ``n`` collections gives one per id.
        """
        classes = self.classes

        def one(v: Any) -> tuple[str, ...]:
            if isinstance(v, (str, int, np.integer)) and not isinstance(v, bool):
                return (self._class_name(v, where),)
            items = v.tolist() if isinstance(v, np.ndarray) else list(v)
            # A numpy 0/1 row as long as the class list is multi-hot; lists of ints are indices.
            if (
                isinstance(v, np.ndarray)
                and v.dtype.kind in "biuf"
                and v.size == len(classes)
                and np.isin(v, (0, 1)).all()
            ):
                return tuple(c for c, on in zip(classes, items) if on)
            return tuple(sorted({self._class_name(x, where) for x in items}, key=classes.index))

        if isinstance(labels, (str, int, np.integer)) and not isinstance(labels, bool):
            return [one(labels)] * n
        try:
            values = list(labels)
            if not values:  # an empty collection: "none of the classes" for every id
                return [()] * n
        except TypeError:
            raise param_error(
                "labels", where, "sets of class names or indices", labels, TypeError
            ) from None
        nested = all(isinstance(v, (list, tuple, set, frozenset, np.ndarray)) for v in values)
        if not nested or len(values) != n:
            if nested:
                raise ValueError(
                    f"The 'labels' parameter of {where} must have one set of classes per id ({n}). "
                    f"Got {len(values)} instead."
                )
            return [one(values)] * n
        return [one(v) for v in values]

    def _label_names(self, labels: Any, n: int, where: str) -> list[Any]:
        if self.multi_label:
            return list(self._label_sets(labels, n, where))
        classes = self.classes
        if isinstance(labels, (str, int, np.integer)) and not isinstance(labels, bool):
            labels = [labels] * n  # one label for all ids
        try:
            values = list(labels)
        except TypeError:
            raise param_error(
                "labels", where, "class names or class indices", labels, TypeError
            ) from None
        if len(values) != n:
            raise ValueError(
                f"The 'labels' parameter of {where} must have one label per id ({n}). Got {len(values)} instead."
            )
        names = []
        for v in values:
            if isinstance(v, str) and v in classes:
                names.append(v)
            elif (
                isinstance(v, (int, np.integer))
                and not isinstance(v, bool)
                and 0 <= int(v) < len(classes)
            ):
                names.append(classes[int(v)])
            else:
                raise ValueError(
                    f"The 'labels' parameter of {where} must hold class names from {classes[:10]}"
                    f"{'...' if len(classes) > 10 else ''} or integer indices in [0, {len(classes) - 1}]. "
                    f"Got {short_repr(v)} instead."
                )
        return names

    def label(self, ids: Any, labels: Any, *, source: str = "human") -> None:
        """Label samples; the labels are committed to the store before this returns.

        Parameters
        ----------
        ids : sample id or sequence of sample ids
        labels : class name, class index, or a sequence of them (one per id)
            A single label is applied to every id.
        source : {"human", "oracle", "import", "suggestion"}
            Recorded with the labels ("suggestion" = a model suggestion the person accepted).
        """
        where = "Session.label"
        self._check_writable(where)
        ids_list = self._ids_arg(ids, where)
        names = self._label_names(labels, len(ids_list), where)
        self.store.label(ids_list, names, source=source)
        self._emit("labeled", ids=ids_list, labels=names, source=source)
        self._after_labels(ids_list)

    def undo(self) -> list[Any] | None:
        """Undo the newest label action (a whole multi-sample call at once).

        Returns the ids it changed back, or None when there is nothing to undo.
        """
        ids = self.store.undo()
        if ids is not None:
            self._label_epoch += 1
            self._emit("undone", ids=ids)
        return ids

    def skip(self, ids: Any) -> None:
        """Mark samples as skipped: queries will not offer them again (undoable)."""
        ids_list = self._ids_arg(ids, "Session.skip")
        self.store.mark(ids_list, "skip")
        self._emit("marked", ids=ids_list, field="skip", value=True)
        self._after_labels(ids_list)

    def flag(self, ids: Any, value: bool = True) -> None:
        """Flag samples for review (or clear the flag); undoable."""
        ids_list = self._ids_arg(ids, "Session.flag")
        self.store.mark(ids_list, "flag", value)
        self._emit("marked", ids=ids_list, field="flag", value=value)

    def add_class(self, name: str) -> None:
        """Add a class. Models trained from now on have one more output."""
        self.store.add_class(name)
        self._emit("class_added", name=name)

    # ------------------------------------------------------------------ querying
    def _needs_model(self, strategy: _strategies.Strategy) -> bool:
        return bool(strategy.needs & MODEL_ARRAYS)

    def compute_arrays(self, needs: Iterable[str]) -> dict[str, np.ndarray]:
        """The arrays strategies ask for, over the whole pool, in one chunked pass on the device."""
        needs = set(needs)
        arrays: dict[str, np.ndarray] = {}
        if "features" in needs:
            arrays["features"] = self.dataset.features
        missing = needs - MODEL_ARRAYS - {"features"}
        if missing:
            raise ValueError(
                f"Session cannot compute {sorted(missing)} for strategy {self.strategy!r}: "
                f"it computes {sorted(MODEL_ARRAYS | {'features'})}."
            )
        if self.multi_label and needs & {"probs", "mc_probs", "member_probs"}:
            raise ValueError(
                f"Strategy {self.strategy!r} needs softmax probabilities, which a multi-label model does "
                "not give (its classes are independent). Use multilabel_entropy or multilabel_margin, "
                "or a diversity strategy (coreset, kmeans, typiclust, random)."
            )
        if not self.multi_label and "label_probs" in needs:
            raise ValueError(
                f"Strategy {self.strategy!r} is for multi-label data (per-class probabilities), and this "
                "dataset is single-label."
            )
        if needs & MODEL_ARRAYS:
            trainer = self._trainer
            # one consistent snapshot: the version and its models are replaced together
            model, members, version = trainer.model, trainer.members, trainer.version
            if model is None or version is None:
                raise RuntimeError("No trained model yet: call train() (and wait()) first.")
            if "member_probs" in needs and len(members) < 2:
                raise ValueError(
                    f"Strategy {self.strategy!r} needs an ensemble ('member_probs'), and the newest fit "
                    f"trained {len(members)} model. Set TrainConfig(ensemble_size=5) (each fit then "
                    "trains 5 members) and train again."
                )
            arrays.update(self.arrays.get(needs & MODEL_ARRAYS, model, members, version))
        return arrays

    def query(self, n: int, *, exclude: Any = None) -> list[Any]:
        """Pick the next ``n`` samples to label with the session's strategy.

        While no model exists, strategies that need model outputs are replaced by
        ``cold_start`` (recorded in the query log). Labeled and skipped samples are never
        picked, nor the ids in ``exclude`` (e.g. those on screen while the next batch is
        prefetched). Each call starts a new round. Safe to call from a background thread.

        Returns
        -------
        list
            Sample ids, best first where the strategy ranks.
        """
        where = "Session.query"
        self._check_writable(where)
        if exclude is not None:
            if isinstance(exclude, (str, bytes, int, np.integer)) or not isinstance(
                exclude, Iterable
            ):
                raise param_error(
                    "exclude", where, "a sequence of sample ids (or None)", exclude, TypeError
                )
            exclude = list(exclude)  # once: a generator must not be consumed by a check
        with self._query_lock:
            mask = self._labeled_mask()
            if exclude:
                mask[self.dataset.positions(self._ids_arg(exclude, where))] = True
            available = int((~mask).sum())
            if available == 0:
                raise ValueError(
                    f"{where}: every sample is labeled, skipped or excluded; nothing is left to query."
                )
            n = check_int(n, "n", where, lo=1, hi=available)
            return self._query_locked(n, mask)

    def _arrays_for(self, strategy: _strategies.Strategy) -> set[str]:
        """What to compute for a strategy: its needs, plus the optional arrays available now
        (raw features always; model outputs once a model exists)."""
        optional = {
            o
            for o in strategy.optional
            if o == "features" or (o in INFERABLE and self.model is not None)
        }
        return set(strategy.needs) | optional

    def _query_locked(self, n: int, mask: np.ndarray) -> list[Any]:
        strategy = _strategies.get(self.strategy)
        used = strategy
        if self.model is None and self._needs_model(strategy):
            used = _strategies.get(self.cold_start)
        rnd = self.round + 1
        rng = np.random.default_rng([self.seed, rnd])
        t0 = time.perf_counter()
        arrays = self.compute_arrays(self._arrays_for(used))
        t1 = time.perf_counter()
        picks = _strategies.select(
            used.name, n, labeled_mask=mask, rng=rng, device=self.device, **arrays
        )
        scores = None
        if used.kind == "score":
            scores = _strategies.scores(
                used.name, **{k: v for k, v in arrays.items() if k in used.needs | used.optional}
            )
        t2 = time.perf_counter()
        ids = [self.dataset.python_id(i) for i in self.dataset.ids[picks]]
        label = used.name if used is strategy else f"{used.name} (cold start for {strategy.name})"
        version = None if self.model_version is None else self.model_version.version
        self.store.begin_round()
        self.store.log_query(
            label, ids, scores=None if scores is None else scores[picks], model_version=version
        )
        self.store.update_round(
            strategy=label,
            queried=len(ids),
            infer_s=t1 - t0,
            select_s=t2 - t1,
            n_labels_at_query=len(self.store),
            model_version=version,
        )
        self._remember_why(ids, picks, scores, mask, label, rnd)
        self._open_batches = [*self._open_batches[-3:], set(ids)]
        self.last_query = {
            "round": rnd,
            "ids": ids,
            "positions": picks,
            "strategy": label,
            "scores": scores,
            "arrays": arrays,
        }
        self._emit("queried", ids=ids, round=rnd, strategy=label)
        return ids

    def _remember_why(
        self,
        ids: list[Any],
        picks: np.ndarray,
        scores: np.ndarray | None,
        mask: np.ndarray,
        strategy: str,
        rnd: int,
    ) -> None:
        """Score and rank among the candidates of each pick, for "why this sample"."""
        candidates = int((~mask).sum())
        if scores is None:
            ranks = np.arange(1, len(ids) + 1)
            values: list[float | None] = [None] * len(ids)
        else:
            ordered = np.sort(scores[~mask])  # ascending
            # rank 1 = highest score; ties share the best rank
            ranks = candidates - np.searchsorted(ordered, scores[picks], side="right") + 1
            values = [float(v) for v in scores[picks]]
        if len(self._why) > 10_000:
            self._why.clear()
        for i, sid in enumerate(ids):
            self._why[sid] = {
                "strategy": strategy,
                "round": rnd,
                "score": values[i],
                "rank": int(ranks[i]),
                "candidates": candidates,
            }

    def explain(self, ids: Any) -> list[dict[str, Any]]:
        """Why each sample was picked and what the newest model thinks of it.

        Returns one dict per id: ``probs`` (class probabilities, or None before the first
        model), ``predicted`` and ``prob`` (the suggestion), and from the query that picked it:
        ``strategy``, ``round``, ``score`` (None for strategies that pick a batch jointly),
        ``rank`` among the ``candidates`` (1 = picked first).
        """
        ids_list = self._ids_arg(ids, "Session.explain")
        probs = self.predict_proba(ids_list) if self.model is not None else None
        classes = self.classes
        out = []
        for i, sid in enumerate(ids_list):
            rec: dict[str, Any] = {
                "id": sid,
                "probs": None,
                "predicted": None,
                "prob": None,
                "strategy": None,
                "round": None,
                "score": None,
                "rank": None,
                "candidates": None,
            }
            if probs is not None and self.multi_label:
                # the suggestion is the set of classes at or above 0.5; prob: how sure the
                # model is of the whole set (the least certain class decides)
                p = probs[i]
                chosen = [c for c, v in zip(classes, p.tolist()) if v >= 0.5]
                sure = float(np.where(p >= 0.5, p, 1.0 - p).min())
                rec.update(probs=[float(v) for v in p], predicted=chosen, prob=sure)
            elif probs is not None:
                p = probs[i]
                top = int(p.argmax())
                rec.update(probs=[float(v) for v in p], predicted=classes[top], prob=float(p[top]))
            rec.update(self._why.get(sid, {}))
            out.append(rec)
        return out

    @property
    def pending(self) -> list[Any]:
        """Ids of the latest query batch not labeled or skipped yet (survives a restart)."""
        log = self.store.queries()
        if not log:
            return []
        done = set(self.store.labels) | self.store.marked("skip")
        return [i for i in log[-1]["ids"] if i not in done]

    # ------------------------------------------------------------------ training
    def train(self, *, block: bool = False) -> None:
        """Fit a fresh model on all current labels, in the session's background thread.

        Returns at once (unless ``block``). A request made while a fit runs is served by one
        more fit on the newest labels after it (requests coalesce). Use :meth:`wait` to block,
        :meth:`stop` to cancel; errors land in ``train_error`` and the ``train_failed`` event.
        """
        self._check_writable("Session.train")
        if not self.store.labels:
            raise ValueError(
                "Session.train needs at least one label. Got 0: label some samples first."
            )
        self._trainer.request(self._label_epoch)
        if block:
            self.wait()
            if self.train_error is not None:
                raise RuntimeError("Training failed:\n" + self.train_error)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no fit is running or queued; False if ``timeout`` seconds passed first."""
        if timeout is not None:
            timeout = check_real(timeout, "timeout", "Session.wait", lo=0)
        return self._trainer.wait(timeout)

    def stop(self) -> None:
        """Cancel the running fit (it is discarded) and any queued one."""
        self._trainer.cancel()

    @property
    def training(self) -> bool:
        """Whether a fit is running or queued."""
        return self._trainer.running

    @property
    def model(self) -> nn.Module | None:
        """The newest finished model (None before the first fit)."""
        return self._trainer.model

    @property
    def model_version(self) -> ModelVersion | None:
        """The newest finished model's version (None before the first fit)."""
        return self._trainer.version

    @property
    def progress(self) -> dict[str, Any]:
        """The running fit's progress, or ``{"state": "idle" | "cancelled" | "error", ...}``."""
        return self._trainer.progress

    @property
    def train_error(self) -> str | None:
        """The traceback of the newest failed fit (None once a fit succeeds)."""
        return self._trainer.error

    @property
    def pseudo_label_count(self) -> int:
        """Pseudo-labels used by the newest fit (``TrainConfig.pseudo_labels``)."""
        return self._trainer.pseudo_label_count

    def _on_trainer_event(self, event: str, **payload: Any) -> None:
        """The trainer's events (on its thread): record a new model in the round, then tell
        the observers."""
        if event == "trained":
            version = payload["version"]
            self.store.update_round(
                train_s=version.seconds, n_labels=version.n_labels, model_version=version.version
            )
        self._emit(event, **payload)
        if event == "trained" and self.evaluate_after_fit and self.dataset.has_holdout:
            self.evaluate()

    def map(self, method: str = "umap", **options: Any) -> Any:
        """The session's map service for ``method`` ("umap" or "pca"): one per method, made on
        first use (``options`` go to :class:`~dal_widgets.projection.Projector` then).

        It refreshes itself after each fit (UMAP in its own thread) and each new map is
        announced as the ``map_changed`` event; views draw ``projector.current()``.
        """
        from dal_widgets.projection import Projector

        check_choice(method, "method", "Session.map", ["umap", "pca"])
        projector = self._maps.get(method)
        if projector is None:
            projector = Projector(self, method=method, **options)
            projector.on_change(lambda proj: self._emit("map_changed", projection=proj))
            self.on("trained", lambda **_kw: projector.refresh())
            self._maps[method] = projector
            projector.refresh()
        elif options:
            raise ValueError(
                f"Session.map: the {method!r} map exists already; its options are fixed when it "
                f"is made. Got {sorted(options)} again."
            )
        return projector

    @property
    def staleness(self) -> int:
        """Labels added since the newest model was trained (all of them before the first fit)."""
        seen = 0 if self.model_version is None else self.model_version.n_labels
        return max(0, len(self.store) - seen)

    def _training_data(self) -> TrainingSet:
        """The labeled set as the trainer takes it (called on its thread when a fit starts)."""
        token = self._label_epoch
        labels = self.store.labels
        ids = list(labels)
        pos = self.dataset.positions(ids)
        order = np.argsort(pos, kind="stable")  # same labeled set -> same order -> same model
        classes = {c: i for i, c in enumerate(self.classes)}
        if self.multi_label:  # multi-hot float targets: the fit loop uses one sigmoid per class
            y = np.zeros((len(ids), len(classes)), dtype=np.float32)
            for row, i in enumerate(order):
                y[row, [classes[c] for c in labels[ids[i]]]] = 1.0
        else:
            y = np.array([classes[labels[ids[i]]] for i in order], dtype=np.int64)
        X = torch.as_tensor(self.dataset.X[pos[order]]).to(self.device)

        def unlabeled() -> np.ndarray:
            return self.dataset.X[np.setdiff1d(np.arange(len(self.dataset)), pos)]

        return TrainingSet(X, torch.as_tensor(y).to(self.device), len(classes), token, unlabeled)

    def export_model(self, path: Any) -> Path:
        """Save the newest model to one file: its weights and a JSON config (classes, dataset
        fingerprint, labels seen, training settings), written atomically.

        Load it back with :meth:`load_model` (``torch.load(..., weights_only=True)``).
        """
        from dal_widgets.training import save_checkpoint

        model, version = self.model, self.model_version
        if model is None or version is None:
            raise RuntimeError("No trained model yet: call train() (and wait()) first.")
        config = {
            "model_class": type(model).__name__,
            "input_shape": list(self.dataset.X.shape[1:]),
            "classes": self.classes,
            "version": version.version,
            "n_labels": version.n_labels,
            "dataset": self.dataset.name,
            "dataset_fingerprint": self.dataset.fingerprint,
            "train_config": self.train_config.__dict__,
        }
        return save_checkpoint(path, model, config)

    def load_model(self, path: Any, *, allow_other_dataset: bool = False) -> None:
        """Load a checkpoint saved by :meth:`export_model` into a fresh model; it becomes the
        newest. One made for another dataset or class list is refused unless
        ``allow_other_dataset``."""
        from dal_widgets.training import load_checkpoint

        model = self._new_model()
        config = load_checkpoint(
            path,
            model,
            classes=self.classes,
            fingerprint=self.dataset.fingerprint,
            dataset_name=self.dataset.name,
            allow_other_dataset=allow_other_dataset,
        )
        version = self._trainer.set_model(model, int(config.get("n_labels", 0)))
        self._emit("trained", version=version)

    # ------------------------------------------------------------------ evaluation
    def predict_proba(self, ids: Any = None) -> np.ndarray:
        """Class probabilities of the newest model for ids (default: the whole pool).

        Softmax rows for single-label data; independent per-class sigmoids for multi-label.
        """
        rows = (
            None
            if ids is None
            else self.dataset.positions(self._ids_arg(ids, "Session.predict_proba"))
        )
        key = "label_probs" if self.multi_label else "probs"
        probs = self.compute_arrays({key})[key]  # the pool's, shared with queries and the map
        return probs if rows is None else probs[rows]

    def evaluate(self) -> dict[str, Any]:
        """Accuracy of the newest model on the dataset's held-out split.

        Returns
        -------
        dict
            ``accuracy``, ``n_eval``, ``model_version`` and ``n_labels`` (labels the model saw);
            also recorded in the current round's history.
        """
        if not self.dataset.has_holdout:
            raise ValueError(
                f"Session.evaluate needs a held-out split, and dataset {self.dataset.name!r} has none. "
                "Load it with holdout=0.2 (a stratified fraction) or holdout=(X_eval, y_eval)."
            )
        model, version = self.model, self.model_version
        if model is None or version is None:
            raise RuntimeError("No trained model yet: call train() (and wait()) first.")
        assert self.dataset.X_eval is not None and self.dataset.y_eval is not None
        key = "label_probs" if self.multi_label else "probs"
        probs = predict(
            model,
            self.dataset.X_eval,
            [key],
            device=self.device,
            batch_size=self.train_config.inference_batch_size,
            precision=self.train_config.precision,
        )[key]
        extra: dict[str, Any] = {}
        if self.multi_label:
            # The learning curve's "accuracy" is micro-F1 for multi-label data.
            pred, true = probs >= 0.5, self.dataset.y_eval.astype(bool)
            tp = float((pred & true).sum())
            acc = 2 * tp / max(float(pred.sum() + true.sum()), 1.0)
            extra = {"metric": "micro-F1", "subset_accuracy": float((pred == true).all(1).mean())}
        else:
            acc = float((probs.argmax(1) == self.dataset.y_eval).mean())
        result = {
            "accuracy": acc,
            **extra,
            "n_eval": len(self.dataset.y_eval),
            "model_version": version.version,
            "n_labels": version.n_labels,
        }
        self.store.update_round(
            accuracy=acc, eval_model_version=version.version, eval_n_labels=version.n_labels
        )
        self.evaluation = result
        self._emit("evaluated", result=result)
        return result

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-round rows: round, strategy, n_labels, accuracy, train_s, infer_s, select_s."""
        rows = []
        for row in self.store.rounds():
            rows.append(
                {
                    "round": row["round"],
                    "strategy": row.get("strategy"),
                    "n_labels": row.get(
                        "eval_n_labels", row.get("n_labels", row.get("n_labels_at_query"))
                    ),
                    "accuracy": row.get("accuracy", math.nan),
                    "train_s": row.get("train_s", 0.0),
                    "infer_s": row.get("infer_s", 0.0),
                    "select_s": row.get("select_s", 0.0),
                }
            )
        return rows

    # ------------------------------------------------------------------ lifecycle
    def _check_writable(self, where: str) -> None:
        """Fail at once, before any work, when the store cannot take this session's writes."""
        if self.store.closed:
            raise StoreClosedError(
                f"{where}: this session's label store {self.store.path!r} is closed (close() was "
                "called, or a newer Session opened the same file). Use the newer Session, or make "
                "a new one."
            )
        if self.store.read_only:
            raise StoreError(
                f"{where}: this session opened its label store {self.store.path!r} with "
                "read_only=True; it can show and export labels, not label, query or train."
            )

    def _release(self) -> None:
        """Stop the worker and drop the model and pool-sized arrays (the store is closing)."""
        self._trainer.close()
        self.arrays.clear()
        self.last_query = None
        self._why = {}

    def close(self) -> None:
        """Stop the training thread, close the store and let go of the model (idempotent)."""
        self._release()
        self.store.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        version = "none" if self.model_version is None else f"v{self.model_version.version}"
        return (
            f"Session(dataset={self.dataset.name!r}, strategy={self.strategy!r}, labels={len(self.store)}, "
            f"round={self.round}, model={version}, device={self.device.type!r}, store={self.store.path!r})"
        )
