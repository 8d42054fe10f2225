"""The Trainer: one daemon thread that fits models on request, and the fit plan it runs.

It knows nothing of sessions, stores or widgets. Whoever owns it hands it three functions:
``data()`` (a snapshot of the labeled set, taken when a fit starts), ``new_model()`` (fresh,
unseeded weights; the trainer seeds the call) and ``emit(event, **payload)`` (how the owner hears
of ``train_started``, ``train_progress``, ``trained`` and ``train_failed``). The trainer holds the
newest model, its ensemble members, its :class:`ModelVersion` and the progress as state that
views read.

The fit plan: fresh seeded weights (or the newest model's with ``warm_start``), a validation
slice for early stopping, the fit with one out-of-memory retry at half the batch, the optional
pseudo-label refit, then the other members of an ensemble.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dal_widgets._threads import start_daemon
from dal_widgets.training._fit import Callback, EarlyStopping, FitResult, FitState, TrainConfig, fit
from dal_widgets.training._inference import predict
from dal_widgets.training._models import classifier_layer
from dal_widgets.training._omp import thread_threads
from dal_widgets.training._rng import seeded
from dal_widgets.training._spreading import SpreadCancelled, SpreadGraph, SpreadVote

__all__ = ["ModelVersion", "Snapshot", "Trainer", "TrainingSet", "weights_key"]


@dataclass(frozen=True)
class ModelVersion:
    """A finished fit: version k, trained on ``n_labels`` labels."""

    version: int
    n_labels: int
    seconds: float
    steps: int
    loss: float
    finished: float  # time.time() when it finished
    #: What identifies the model across kernels (a hash of its weights): caches key on this,
    #: never on ``version``, which restarts at 1 in every process.
    key: str = ""
    #: A hash of the labeled set it was trained on (``TrainingSet.labels_key``; "" if unknown).
    labels_key: str = ""

    def __repr__(self) -> str:
        """``ModelVersion(v3, 120 labels, 1.84 s, loss 0.213, finished 14:02:11)``: rounded,
        with the local time of day (and the date when not today) instead of a Unix time.
        The fields keep their exact values; the dataclass keeps this over its generated one."""
        from dal_widgets._repr import fmt_float, fmt_seconds, fmt_time

        return (
            f"ModelVersion(v{self.version}, {self.n_labels} labels, {fmt_seconds(self.seconds)}, "
            f"loss {fmt_float(self.loss, 3)}, finished {fmt_time(self.finished)})"
        )


#: Fits of CPU models up to this many parameters run at one intra-op thread (the default
#: models: SmallCNN about 80,000, the tabular MLP about 50,000, an embedding head D x C).
#: Measured on 2 cores with a notebook-like main thread: the digits MLP's fit took 0.77 s at
#: two threads and 0.44 s at one; the MNIST SmallCNN's about the same at either.
ONE_THREAD_PARAMS = 1_000_000


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_key(model: nn.Module) -> str:
    """A short hash of a model's weights and buffers (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """The newest model with its ensemble (model first) and version, replaced as one value,
    so a reader on another thread never pairs one fit's model with another's version."""

    model: nn.Module
    members: list[nn.Module]
    version: ModelVersion


@dataclass(frozen=True)
class TrainingSet:
    """What one fit trains on: inputs and targets on the device, in a fixed order.

    ``token`` identifies the labeled set (it changes with every label action), so a request
    made while a fit of the same set runs is not served twice. ``unlabeled`` gives the pool
    inputs without labels, for the pseudo-label refit; it is only called when that is on.
    """

    X: torch.Tensor
    y: torch.Tensor
    n_classes: int
    token: int
    unlabeled: Callable[[], np.ndarray]
    #: A hash of the labels themselves, kept in the model's version (what a saved model was
    #: trained on survives the process; ``token`` does not).
    labels_key: str = ""
    #: The pool positions of the labels, in the order of ``X``, and the whole pool's model
    #: inputs (for ``TrainConfig.label_spreading``; None where the caller has no pool).
    positions: np.ndarray | None = None
    pool: Callable[[], Any] | None = None

    @property
    def n_labels(self) -> int:
        return int(self.X.shape[0])


# Trainers with a live thread. At interpreter exit each is stopped and joined before Python
# finalizes: a daemon thread still inside a torch kernel then aborts the process (exit code 134,
# "terminate called without an active exception").
_LIVE: weakref.WeakSet[Trainer] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for trainer in list(_LIVE):
        trainer.close(timeout=30.0)


class _Progress(Callback):
    """Publishes fit progress into the trainer (state that views read), at most 10 times a second."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.last = 0.0

    def _publish(self, state: FitState, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        self.trainer._set_progress(
            {
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
        )

    def on_batch_end(self, state: FitState) -> None:
        self._publish(state)

    def on_fit_end(self, state: FitState) -> None:
        self._publish(state, force=True)


class Trainer:
    """Fits models in one daemon thread, on request.

    Policy for a :meth:`request` while a fit runs: the running fit finishes, then one more fit
    runs on the labels as they are then (requests made meanwhile coalesce into that one). So the
    newest model is never more than one fit behind, and no work is thrown away.

    Parameters
    ----------
    data : callable
        ``data() -> TrainingSet``, called on the worker thread when a fit starts.
    new_model : callable
        ``new_model() -> nn.Module`` with fresh weights (the trainer seeds the call).
    config : TrainConfig
    device : torch.device
    seed : int
        Each fit is seeded by ``(seed, n_labels)``: the same labels give the same model.
    emit : callable
        ``emit(event, **payload)`` for ``train_started`` (version, n_labels),
        ``train_progress`` (progress), ``trained`` (version), ``train_failed`` (error) and
        ``train_idle`` (no payload: no fit runs or is queued any more). Called on the worker
        thread.
    """

    def __init__(
        self,
        *,
        data: Callable[[], TrainingSet],
        new_model: Callable[[], nn.Module],
        config: TrainConfig,
        device: torch.device,
        seed: int,
        emit: Callable[..., None],
    ) -> None:
        self.data = data
        self.new_model = new_model
        self.config = config
        self.device = device
        self.seed = seed
        self.emit = emit
        #: The newest finished model, its ensemble and its version, as one value (None
        #: before the first fit).
        self.current: Snapshot | None = None
        #: Progress of the running fit, or ``{"state": "idle" | "cancelled" | "error", ...}``.
        self.progress: dict[str, Any] = {"state": "idle"}
        #: The traceback of the newest failed fit (None after a fit succeeds).
        self.error: str | None = None
        #: Pseudo-labels used by the newest fit (``TrainConfig.pseudo_labels``, or the pool
        #: samples ``label_spreading`` reached).
        self.pseudo_label_count = 0
        self._graph: SpreadGraph | None = None  # label_spreading's graph of the pool, kept
        self._number = 0  # the newest version number given (numbers go on after a switch)
        self._cond = threading.Condition()
        self._pending = False
        self._busy = False
        self._closed = False
        self._token: int | None = None  # the labeled set of the running fit
        # The newest labeled set the queued request asks for (None: any fit, unconditionally).
        # A fit that read its labels after the request was made serves it, even when the
        # request came before the fit had read them (it is dropped once that fit publishes).
        self._want: int | None = None
        # Set to cancel the running fit. A request after a cancel gets a new event rather than
        # clearing this one, so the cancelled fit still sees it and stops.
        self._cancel = threading.Event()
        self._fit_cancel = self._cancel  # the event of the fit that runs now
        self._fit_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ requests
    def request(self, token: int | None = None) -> None:
        """Ask for a fit on the labels as they are when it starts (see the class's policy)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("This trainer is closed; make a new Session to train.")
            if (
                self._busy
                and not self._pending
                and not self._cancel.is_set()
                and token is not None
                and token == self._token
            ):
                return  # the running fit already has exactly these labels
            if not self._pending:
                self._want = token
            elif self._want is not None and token is not None:
                self._want = max(self._want, token)
            else:
                self._want = None  # one of the queued requests asks for any fit
            self._pending = True
            if self._cancel.is_set():
                self._cancel = threading.Event()
            if self._thread is None or not self._thread.is_alive():
                self._thread = start_daemon(
                    self._loop, name="dal-widgets-trainer", on_error=self._loop_failed
                )
                _LIVE.add(self)
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no fit runs or is queued; False if ``timeout`` seconds passed first.

        On the trainer's own thread (an observer of its events) it returns False at once:
        the thread cannot wait for itself."""
        if threading.current_thread() is self._thread:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def cancel(self) -> None:
        """Cancel the running fit (it is discarded) and any queued one."""
        with self._cond:
            self._pending = False
            self._cancel.set()
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel, end the thread (joined up to ``timeout`` s) and let go of the models."""
        self.cancel()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)
        _LIVE.discard(self)
        self.current = None
        self._graph = None

    @property
    def model(self) -> nn.Module | None:
        """The newest finished model (None before the first fit)."""
        current = self.current
        return None if current is None else current.model

    @property
    def members(self) -> list[nn.Module]:
        """The newest fit's ensemble, model first (empty before the first fit)."""
        current = self.current
        return [] if current is None else current.members

    @property
    def version(self) -> ModelVersion | None:
        """The newest model's version (None before the first fit)."""
        current = self.current
        return None if current is None else current.version

    @property
    def running(self) -> bool:
        """Whether a fit runs or is queued."""
        return self._busy or self._pending

    def set_model(self, model: nn.Module, n_labels: int, labels_key: str = "") -> ModelVersion:
        """Make ``model`` the newest (e.g. loaded from a checkpoint) as the next version; a
        running or queued fit is cancelled first, so it cannot replace it.

        Emits nothing: the caller announces it as it sees fit."""
        self.cancel()
        self.wait()
        model = model.to(self.device).eval()
        number = self._number + 1
        version = ModelVersion(
            number, n_labels, 0.0, 0, float("nan"), time.time(), weights_key(model), labels_key
        )
        self.current = Snapshot(model, [model], version)
        self._number = number
        return version

    def switch(self, apply: Callable[[], None], config: TrainConfig) -> None:
        """Change what fits read: cancel the running fit, then, while none runs, call
        ``apply()`` (which swaps the inputs) and take ``config``. The newest model is dropped
        (it reads the old inputs); version numbers go on from it."""
        self.cancel()
        with self._fit_lock:
            apply()
            self.config = config
            self.current = None
            self._graph = None

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._pending = False
                self._busy = True
            published = False
            try:
                published = self._fit_once()
            except BaseException:  # noqa: BLE001 (captured for the views, never printed)
                self.error = traceback.format_exc()
                self._set_progress({"state": "error"})
                self.emit("train_failed", error=self.error)
            finally:
                with self._cond:
                    if self._pending and published and self._served(self._want):
                        self._pending = False  # asked for while this fit read those labels
                    self._busy = False
                    idle = not self._pending
                    self._cond.notify_all()
            if idle:  # after "trained": views that read ``running`` now see the truth
                self.emit("train_idle")

    def _loop_failed(self, _exc: BaseException, text: str) -> None:
        """The loop itself broke (not a fit: those are caught per fit): keep it for the views."""
        self.error = text
        self.progress = {"state": "error"}

    def _set_progress(self, progress: dict[str, Any]) -> None:
        self.progress = progress
        self.emit("train_progress", progress=progress)

    def _served(self, want: int | None) -> bool:
        """Whether the fit that just published had the labeled set ``want`` (or a newer one)."""
        return want is not None and self._token is not None and want <= self._token

    def _fit_once(self) -> bool:
        """One fit; whether it published a model."""
        version = self._fit_locked()
        if version is not None:  # outside the lock: observers may load, train or wait
            self.emit("trained", version=version)
        return version is not None

    def _fit_locked(self) -> ModelVersion | None:
        """One fit of the plan; the new version once it is published, else None."""
        cancel = self._fit_cancel = self._cancel
        with self._fit_lock:
            data = self.data()
            self._token = data.token
            X, y, n_labels = data.X, data.y, data.n_labels
            number = self._number + 1
            self.error = None
            self.emit("train_started", version=number, n_labels=n_labels)
            fit_seed = int(np.random.SeedSequence([self.seed, n_labels]).generate_state(1)[0])
            model = self._initial_model(fit_seed, data.n_classes)
            X, y, callbacks = self._validation_split(X, y, fit_seed)
            bank = (X, y)  # what a SpreadVote model votes with: the labels, plus the spread ones
            if self.config.label_spreading:
                X, y, bank = self._with_spread_labels(X, y, data)
            result = self._fit_with_oom_retry(model, X, y, callbacks, fit_seed)
            if self.config.pseudo_labels > 0 and not result.cancelled:
                model, result = self._refit_with_pseudo_labels(
                    model, X, y, callbacks, fit_seed, result, data
                )
            members = [model]
            for m in range(1, self.config.ensemble_size):  # committee: other seeds, fresh weights
                if result.cancelled:
                    break
                member = self._seeded_model(fit_seed + m)
                self._fit_with_oom_retry(member, X, y, [_Progress(self)], fit_seed + m)
                members.append(member)
                result = result if not cancel.is_set() else replace(result, cancelled=True)
            if result.cancelled or self._closed:
                self._set_progress({"state": "cancelled"})
                return None
            for member in members:
                if isinstance(member, SpreadVote):
                    member.set_bank(*bank)
            version = ModelVersion(
                number,
                n_labels,
                result.seconds,
                result.steps,
                result.loss,
                time.time(),
                weights_key(model),
                data.labels_key,
            )
            self.current = Snapshot(model, members, version)
            self._number = number
            self.progress = {"state": "idle", "version": number, "loss": result.loss}
            return version

    def _seeded_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return self.new_model().to(self.device)

    def _initial_model(self, fit_seed: int, n_classes: int) -> nn.Module:
        """Fresh weights (seeded), or the newest model's with ``warm_start`` and unchanged classes."""
        newest = self.model
        if self.config.warm_start and newest is not None:
            if getattr(classifier_layer(newest), "out_features", None) == n_classes:
                model = copy.deepcopy(newest).to(self.device)
                if isinstance(model, SpreadVote):
                    model.clear_bank()  # it trains alone; it votes again after the fit
                return model
        return self._seeded_model(fit_seed)

    def _validation_split(
        self, X: torch.Tensor, y: torch.Tensor, fit_seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[Callback]]:
        """With ``early_stopping``, hold out a seeded slice of the labels for the callback."""
        callbacks: list[Callback] = [_Progress(self)]
        cfg = self.config
        n = int(X.shape[0])
        if not cfg.early_stopping or n < 4 * cfg.min_val:
            return X, y, callbacks
        n_val = max(cfg.min_val, round(cfg.val_fraction * n))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(fit_seed)).to(X.device)
        val, train = order[:n_val], order[n_val:]
        callbacks.append(EarlyStopping(X[val], y[val], patience=cfg.patience))
        return X[train], y[train], callbacks

    def _with_spread_labels(
        self, X: torch.Tensor, y: torch.Tensor, data: TrainingSet
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``TrainConfig.label_spreading``: the labels spread over the pool's k-NN graph (built
        once per pool); the labels, repeated to weigh as much, plus every pool sample reached,
        and (the ``spread_vote`` bank) the labels once plus the samples reached."""
        cfg = self.config
        if data.pool is None or data.positions is None:
            return X, y, (X, y)
        pool = data.pool()
        graph = self._graph
        if graph is None or not graph.matches(
            pool, cfg.spread_neighbors, cfg.spread_max_pool, self.device
        ):
            try:
                graph = self._graph = SpreadGraph(
                    pool, cfg.spread_neighbors, cfg.spread_max_pool, self.device,
                    stop=self._fit_cancel,
                )  # fmt: skip
            except SpreadCancelled:  # the fit is cancelled: it will see so at once
                return X, y, (X, y)
        pos, cls = graph.labels(
            data.positions, y.cpu().numpy(), data.n_classes, balance=cfg.spread_balance
        )
        self.pseudo_label_count = int(pos.size)
        if pos.size == 0:
            return X, y, (X, y)
        Xs = torch.as_tensor(np.ascontiguousarray(pool[pos])).to(self.device, X.dtype)
        ys = torch.as_tensor(cls).to(self.device)
        reps = max(1, round(len(ys) / len(y)))
        bank = (torch.cat([X, Xs]), torch.cat([y, ys]))
        return torch.cat([X] * reps + [Xs]), torch.cat([y] * reps + [ys]), bank

    def _refit_with_pseudo_labels(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        callbacks: list[Callback],
        fit_seed: int,
        first: FitResult,
        data: TrainingSet,
    ) -> tuple[nn.Module, FitResult]:
        """Self-training (``TrainConfig.pseudo_labels``): confident predictions on the unlabeled
        pool become labels for a second, fresh fit. Returns the new model and a result whose
        ``seconds`` cover both fits and the pool pass."""
        cfg = self.config
        t0 = time.perf_counter()
        pool = data.unlabeled()
        probs = predict(
            model,
            pool,
            {"probs"},
            device=self.device,
            batch_size=cfg.inference_batch_size,
            precision=cfg.precision,
        )["probs"]
        conf, cls = probs.max(1), probs.argmax(1)
        keep = np.flatnonzero(conf >= cfg.pseudo_labels)
        # The most confident pseudo_per_class of each class: sort by class, then by confidence.
        keep = keep[np.lexsort((-conf[keep], cls[keep]))]
        first_of_class = np.searchsorted(cls[keep], cls[keep], side="left")
        keep = keep[np.arange(keep.size) - first_of_class < cfg.pseudo_per_class]
        self.pseudo_label_count = int(keep.size)
        if keep.size == 0:
            return model, first
        Xp = torch.as_tensor(pool[keep]).to(self.device)
        yp = torch.as_tensor(cls[keep].astype(np.int64)).to(self.device)
        again: list[Callback] = [_Progress(self)] + [
            EarlyStopping(cb.X_val, cb.y_val, patience=cb.patience)
            for cb in callbacks
            if isinstance(cb, EarlyStopping)
        ]
        student = self._seeded_model(fit_seed + 7919)
        # The labels are repeated to weigh as much as the pseudo-labels: a few hundred true
        # labels must not drown in thousands of guesses (that costs accuracy as labels grow).
        reps = max(1, round(len(yp) / len(y)))
        # As many steps as the supervised fit (min_epochs would multiply them by the new size).
        result = self._fit_with_oom_retry(
            student,
            torch.cat([X] * reps + [Xp]),
            torch.cat([y] * reps + [yp]),
            again,
            fit_seed + 7919,
            cfg.with_(steps=max(1, first.steps), min_epochs=1),
        )
        seconds = first.seconds + (time.perf_counter() - t0)
        return student, replace(result, seconds=seconds)

    def _fit_with_oom_retry(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        callbacks: list[Callback],
        fit_seed: int,
        config: TrainConfig | None = None,
    ) -> FitResult:
        """Fit; on CUDA out-of-memory, halve the batch size and retry once, then a clear error."""
        config = config or self.config
        # A small model's fit is hundreds of small ops per second, which lose more to waking a
        # second thread than they gain (see training/_omp.py): one thread, in this thread only.
        tiny = self.device.type == "cpu" and _n_params(model) <= ONE_THREAD_PARAMS
        for attempt in range(2):
            try:
                with thread_threads(1 if tiny else None):
                    return fit(
                        model,
                        X,
                        y,
                        config=config,
                        callbacks=callbacks,
                        stop_event=self._fit_cancel,
                        seed=fit_seed,
                    )
            except torch.cuda.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if attempt == 1 or config.batch_size == 1:
                    raise RuntimeError(
                        f"CUDA ran out of memory with batch size {self.config.batch_size} and again "
                        f"with {config.batch_size}. Lower TrainConfig.batch_size, use a smaller model, "
                        "or train on device='cpu'."
                    ) from None
                config = config.with_(batch_size=max(1, config.batch_size // 2))
                self.progress = {
                    "state": "training",
                    "note": f"out of memory: retrying with batch size {config.batch_size}",
                }
        raise AssertionError("unreachable")
