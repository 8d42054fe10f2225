"""The headless orchestrator: query -> label -> train -> evaluate, with events for views.

A :class:`Session` owns a dataset, a label store, a strategy name and the newest trained model.
It never imports Jupyter: widgets subscribe to its events with :meth:`Session.on`.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dal_widgets import strategies as _strategies
from dal_widgets._checks import check_choice, check_int, param_error, short_repr
from dal_widgets.data import Dataset
from dal_widgets.store import LabelStore
from dal_widgets.training import (
    INFERABLE,
    Callback,
    EarlyStopping,
    FitState,
    TrainConfig,
    classifier_layer,
    default_model,
    fit,
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
}


@dataclass(frozen=True)
class ModelVersion:
    """A finished fit: version k, trained on ``n_labels`` labels."""

    version: int
    n_labels: int
    seconds: float
    steps: int
    loss: float
    finished: float  # time.time() when it finished


class _Progress(Callback):
    """Publishes fit progress into the session (state that views observe), at most 10 times a second."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.last = 0.0

    def _publish(self, state: FitState, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        progress = {
            "state": "training",
            "epoch": state.epoch + 1,
            "epochs": state.epochs,
            "step": state.step,
            "steps": state.steps,
            "loss": state.loss,
            "samples_per_second": state.samples_per_second,
            "eta": state.eta,
            **state.metrics,
        }
        self.session.progress = progress
        self.session._emit("train_progress", progress=progress)

    def on_batch_end(self, state: FitState) -> None:
        self._publish(state)

    def on_fit_end(self, state: FitState) -> None:
        self._publish(state, force=True)


class _Worker:
    """One daemon thread per session that runs fits.

    Policy for a ``train()`` request while a fit runs: the running fit finishes, then one more
    fit runs on the labels as they are then (requests made meanwhile coalesce into that one).
    So the newest model is never more than one fit behind, and no work is thrown away.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.cond = threading.Condition()
        self.pending = False
        self.busy = False
        self.closed = False
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None

    def request(self) -> None:
        with self.cond:
            if self.closed:
                raise RuntimeError("This session is closed; make a new Session to train.")
            if (
                self.busy
                and not self.pending
                and self.session._fitting_epoch == self.session._label_epoch
            ):
                return  # the running fit already has exactly these labels
            self.pending = True
            self.cancel.clear()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._loop, name="dal-widgets-trainer", daemon=True
                )
                self.thread.start()
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                self.pending = False
                self.busy = True
            try:
                self.session._fit_once(self.cancel)
            except BaseException:  # noqa: BLE001 (captured for the views, never printed)
                self.session._record_failure(traceback.format_exc())
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.pending or self.busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def stop(self) -> None:
        with self.cond:
            self.pending = False
            self.cancel.set()
            self.cond.notify_all()

    def close(self) -> None:
        self.stop()
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)

    @property
    def running(self) -> bool:
        return self.busy or self.pending


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
        if isinstance(store, LabelStore):
            self.store = store
        else:
            self.store = LabelStore(
                ":memory:" if store is None else store,
                fingerprint=dataset.fingerprint,
                classes=dataset.classes,
                dataset_name=dataset.name,
                annotator=annotator,
                multi_label=dataset.multi_label,
            )
        self.multi_label = dataset.multi_label
        #: Pseudo-labels used by the newest fit (``TrainConfig.pseudo_labels``).
        self.pseudo_label_count = 0
        self._observers: dict[str, list[Callable[..., Any]]] = {}
        self.observer_errors: list[str] = []
        self._model: nn.Module | None = None
        self._members: list[nn.Module] = []  # the ensemble of the newest fit (model first)
        self.model_version: ModelVersion | None = None
        self.progress: dict[str, Any] = {"state": "idle"}
        self.train_error: str | None = None
        self.last_query: dict[str, Any] | None = None
        self._fit_lock = threading.Lock()
        self._query_lock = threading.Lock()
        self._worker = _Worker(self)
        self.retrain = retrain  # validated by the property setter
        self._new_since_request = 0
        self._label_epoch = 0  # bumped by every change of the labeled set
        self._fitting_epoch = -1
        self._why: dict[Any, dict[str, Any]] = {}
        # Query batches not finished yet (for retrain="batch"); the last one survives a restart.
        self._open_batches: list[set[Any]] = []
        if self.pending:
            self._open_batches.append(set(self.pending))

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
            self._worker.request()

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

    def _new_model(self) -> nn.Module:
        shape = tuple(self.dataset.X.shape[1:])
        n_classes = len(self.classes)
        if self._model_spec == "auto":
            head = (
                self.train_config.loss_head or "loss_pred" in _strategies.get(self.strategy).needs
            )
            return default_model(shape, n_classes, self.dataset.kind, loss_head=head)
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
        if ids is None or isinstance(ids, (bool, float, dict)):
            raise param_error(
                "ids", where, "a sample id or a sequence of sample ids", ids, TypeError
            )
        try:
            ids_list = list(ids)
        except TypeError:
            raise param_error(
                "ids", where, "a sample id or a sequence of sample ids", ids, TypeError
            ) from None
        if not ids_list:
            raise param_error("ids", where, "at least one sample id", ids)
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
        return bool(strategy.needs & (INFERABLE | {"member_probs"}))

    def compute_arrays(self, needs: Iterable[str]) -> dict[str, np.ndarray]:
        """The arrays strategies ask for, over the whole pool, in one chunked pass on the device."""
        needs = set(needs)
        arrays: dict[str, np.ndarray] = {}
        if "features" in needs:
            arrays["features"] = self.dataset.features
        model_needs = needs & INFERABLE
        missing = needs - INFERABLE - {"features", "member_probs"}
        if missing:
            raise ValueError(
                f"Session cannot compute {sorted(missing)} for strategy {self.strategy!r}: "
                f"it computes {sorted(INFERABLE | {'features', 'member_probs'})}."
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
        if model_needs or "member_probs" in needs:
            model, members = self._model, self._members
            if model is None:
                raise RuntimeError("No trained model yet: call train() (and wait()) first.")
            if "member_probs" in needs and len(members) < 2:
                raise ValueError(
                    f"Strategy {self.strategy!r} needs an ensemble ('member_probs'), and the newest fit "
                    f"trained {len(members)} model. Set TrainConfig(ensemble_size=5) (each fit then "
                    "trains 5 members) and train again."
                )
            if model_needs:
                arrays.update(self._predict(model, model_needs))
            if "member_probs" in needs:
                arrays["member_probs"] = np.stack(
                    [self._predict(m, {"probs"})["probs"] for m in members], axis=1
                )
        return arrays

    def _predict(
        self, model: nn.Module, needs: set[str], X: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        cfg = self.train_config
        return predict(
            model,
            self.dataset.X if X is None else X,
            needs,
            device=self.device,
            batch_size=cfg.inference_batch_size,
            mc_samples=cfg.mc_samples,
            seed=self.seed + self.round,
            precision=cfg.precision,
            deepfool_iters=cfg.deepfool_iters,
        )

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
        with self._query_lock:
            mask = self._labeled_mask()
            if exclude is not None:
                excluded = self._ids_arg(exclude, where) if len(list(exclude)) else []
                if excluded:
                    mask[self.dataset.positions(excluded)] = True
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
            if o == "features" or (o in INFERABLE and self._model is not None)
        }
        return set(strategy.needs) | optional

    def _query_locked(self, n: int, mask: np.ndarray) -> list[Any]:
        strategy = _strategies.get(self.strategy)
        used = strategy
        if self._model is None and self._needs_model(strategy):
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
        probs = self.predict_proba(ids_list) if self._model is not None else None
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
        if not self.store.labels:
            raise ValueError(
                "Session.train needs at least one label. Got 0: label some samples first."
            )
        self._worker.request()
        if block:
            self.wait()
            if self.train_error is not None:
                raise RuntimeError("Training failed:\n" + self.train_error)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no fit is running or queued; False if ``timeout`` seconds passed first."""
        return self._worker.wait(timeout)

    def stop(self) -> None:
        """Cancel the running fit (it is discarded) and any queued one."""
        self._worker.stop()

    @property
    def training(self) -> bool:
        """Whether a fit is running or queued."""
        return self._worker.running

    @property
    def model(self) -> nn.Module | None:
        """The newest finished model (None before the first fit)."""
        return self._model

    @property
    def staleness(self) -> int:
        """Labels added since the newest model was trained (all of them before the first fit)."""
        seen = 0 if self.model_version is None else self.model_version.n_labels
        return max(0, len(self.store) - seen)

    def _training_data(self) -> tuple[torch.Tensor, torch.Tensor, int]:
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
        return X, torch.as_tensor(y).to(self.device), len(ids)

    def _fit_once(self, cancel: threading.Event) -> None:
        with self._fit_lock:
            self._fitting_epoch = self._label_epoch
            X, y, n_labels = self._training_data()
            next_version = 1 if self.model_version is None else self.model_version.version + 1
            self.train_error = None
            self._emit("train_started", version=next_version, n_labels=n_labels)
            fit_seed = int(np.random.SeedSequence([self.seed, n_labels]).generate_state(1)[0])
            model = self._initial_model(fit_seed)
            X, y, callbacks = self._validation_split(X, y, fit_seed)
            result = self._fit_with_oom_retry(model, X, y, callbacks, cancel, fit_seed)
            if self.train_config.pseudo_labels > 0 and not result.cancelled:
                model, result = self._refit_with_pseudo_labels(
                    model, X, y, callbacks, cancel, fit_seed, result
                )
            members = [model]
            for m in range(
                1, self.train_config.ensemble_size
            ):  # committee: other seeds, fresh weights
                if result.cancelled:
                    break
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(fit_seed + m)
                    member = self._new_model().to(self.device)
                self._fit_with_oom_retry(member, X, y, [_Progress(self)], cancel, fit_seed + m)
                members.append(member)
                result = result if not cancel.is_set() else replace(result, cancelled=True)
            if result.cancelled:
                self.progress = {"state": "cancelled"}
                self._emit("train_progress", progress=self.progress)
                return
            version = ModelVersion(
                next_version, n_labels, result.seconds, result.steps, result.loss, time.time()
            )
            self._model, self._members, self.model_version = model, members, version
            self.store.update_round(
                train_s=result.seconds, n_labels=n_labels, model_version=next_version
            )
            self.progress = {"state": "idle", "version": next_version, "loss": result.loss}
            self._emit("trained", version=version)

    def _refit_with_pseudo_labels(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        callbacks: list[Callback],
        cancel: threading.Event,
        fit_seed: int,
        first: Any,
    ) -> tuple[nn.Module, Any]:
        """Self-training (``TrainConfig.pseudo_labels``): confident predictions on the unlabeled
        pool become labels for a second, fresh fit. Returns the new model and a result whose
        ``seconds`` cover both fits and the pool pass."""
        cfg = self.train_config
        t0 = time.perf_counter()
        unlabeled = np.setdiff1d(
            np.arange(len(self.dataset)), self.dataset.positions(list(self.store.labels))
        )
        probs = self._predict(model, {"probs"}, self.dataset.X[unlabeled])["probs"]
        conf, cls = probs.max(1), probs.argmax(1)
        keep = np.flatnonzero(conf >= cfg.pseudo_labels)
        # The most confident pseudo_per_class of each class: sort by class, then by confidence.
        keep = keep[np.lexsort((-conf[keep], cls[keep]))]
        first_of_class = np.searchsorted(cls[keep], cls[keep], side="left")
        keep = keep[np.arange(keep.size) - first_of_class < cfg.pseudo_per_class]
        self.pseudo_label_count = int(keep.size)
        if keep.size == 0:
            return model, first
        Xp = torch.as_tensor(self.dataset.X[unlabeled[keep]]).to(self.device)
        yp = torch.as_tensor(cls[keep].astype(np.int64)).to(self.device)
        again: list[Callback] = [_Progress(self)] + [
            EarlyStopping(cb.X_val, cb.y_val, patience=cb.patience)
            for cb in callbacks
            if isinstance(cb, EarlyStopping)
        ]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fit_seed + 7919)
            student = self._new_model().to(self.device)
        # The labels are repeated to weigh as much as the pseudo-labels: a few hundred true
        # labels must not drown in thousands of guesses (that costs accuracy as labels grow).
        reps = max(1, round(len(yp) / len(y)))
        # As many steps as the supervised fit (min_epochs would multiply them by the new size).
        result = self._fit_with_oom_retry(
            student,
            torch.cat([X] * reps + [Xp]),
            torch.cat([y] * reps + [yp]),
            again,
            cancel,
            fit_seed + 7919,
            cfg.with_(steps=max(1, first.steps), min_epochs=1),
        )
        seconds = first.seconds + (time.perf_counter() - t0)
        return student, replace(result, seconds=seconds)

    def _initial_model(self, fit_seed: int) -> nn.Module:
        """Fresh weights (seeded), or the newest model's with ``warm_start`` and unchanged classes."""
        newest = self._model
        if self.train_config.warm_start and newest is not None:
            layer = classifier_layer(newest)
            if getattr(layer, "out_features", None) == len(self.classes):
                return copy.deepcopy(newest).to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fit_seed)
            return self._new_model().to(self.device)

    def _validation_split(
        self, X: torch.Tensor, y: torch.Tensor, fit_seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[Callback]]:
        """With ``early_stopping``, hold out a seeded slice of the labels for the callback."""
        callbacks: list[Callback] = [_Progress(self)]
        cfg = self.train_config
        n = int(X.shape[0])
        if not cfg.early_stopping or n < 4 * cfg.min_val:
            return X, y, callbacks
        n_val = max(cfg.min_val, round(cfg.val_fraction * n))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(fit_seed)).to(X.device)
        val, train = order[:n_val], order[n_val:]
        callbacks.append(EarlyStopping(X[val], y[val], patience=cfg.patience))
        return X[train], y[train], callbacks

    def _fit_with_oom_retry(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        callbacks: list[Callback],
        cancel: threading.Event,
        fit_seed: int,
        config: TrainConfig | None = None,
    ) -> Any:
        """Fit; on CUDA out-of-memory, halve the batch size and retry once, then a clear error."""
        config = config or self.train_config
        for attempt in range(2):
            try:
                return fit(
                    model,
                    X,
                    y,
                    config=config,
                    callbacks=callbacks,
                    stop_event=cancel,
                    seed=fit_seed,
                )
            except torch.cuda.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if attempt == 1 or config.batch_size == 1:
                    raise RuntimeError(
                        f"CUDA ran out of memory with batch size {self.train_config.batch_size} and again "
                        f"with {config.batch_size}. Lower TrainConfig.batch_size, use a smaller model, "
                        "or train on device='cpu'."
                    ) from None
                config = config.with_(batch_size=max(1, config.batch_size // 2))
                self.progress = {
                    "state": "training",
                    "note": f"out of memory: retrying with batch size {config.batch_size}",
                }
        raise AssertionError("unreachable")

    def _record_failure(self, text: str) -> None:
        self.train_error = text
        self.progress = {"state": "error"}
        self._emit("train_failed", error=text)

    def export_model(self, path: Any) -> tuple[str, str]:
        """Save the newest model: weights (``path``) and a JSON config beside it.

        Load it back with :meth:`load_model` (``torch.load(..., weights_only=True)``).
        """
        from dal_widgets.training import save_checkpoint

        model, version = self._model, self.model_version
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

    def load_model(self, path: Any) -> None:
        """Load weights saved by :meth:`export_model` into a fresh model; it becomes the newest."""
        from dal_widgets.training import load_checkpoint

        model = self._new_model()
        config = load_checkpoint(path, model)
        model = model.to(self.device).eval()
        version = (self.model_version.version + 1) if self.model_version else 1
        self._model, self._members = model, [model]
        self.model_version = ModelVersion(
            version, int(config.get("n_labels", 0)), 0.0, 0, math.nan, time.time()
        )
        self._emit("trained", version=self.model_version)

    # ------------------------------------------------------------------ evaluation
    def predict_proba(self, ids: Any = None) -> np.ndarray:
        """Class probabilities of the newest model for ids (default: the whole pool).

        Softmax rows for single-label data; independent per-class sigmoids for multi-label.
        """
        if self._model is None:
            raise RuntimeError("No trained model yet: call train() (and wait()) first.")
        X = (
            self.dataset.X
            if ids is None
            else self.dataset.X[self.dataset.positions(self._ids_arg(ids, "Session.predict_proba"))]
        )
        key = "label_probs" if self.multi_label else "probs"
        return predict(
            self._model,
            X,
            [key],
            device=self.device,
            batch_size=self.train_config.inference_batch_size,
            precision=self.train_config.precision,
        )[key]

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
        model, version = self._model, self.model_version
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
    def close(self) -> None:
        """Stop the training thread and close the store (idempotent)."""
        self._worker.close()
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
