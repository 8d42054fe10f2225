"""The one training loop. Everything else (progress, early stopping, ...) is a callback."""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dal_widgets._checks import check_int, check_real, param_error
from dal_widgets.training._rng import seeded

__all__ = [
    "Callback",
    "EarlyStopping",
    "FitResult",
    "FitState",
    "TrainConfig",
    "affine_augment",
    "autocast_dtype",
    "fit",
]


@dataclass(frozen=True)
class TrainConfig:
    """How a model is fitted on the labeled set.

    The defaults fit a fresh model for a fixed number of optimizer steps (``steps``), so that
    a fit on 20 labels gets as many updates as a fit on 2,000 (epochs = steps / batches per
    epoch, at least ``min_epochs``). From scratch rather than warm-started: warm starting
    tends to generalize worse (Ash & Adams, "On warm-starting neural network training",
    NeurIPS 2020) and would make results depend on the order of rounds.

    Attributes
    ----------
    steps : int
        Optimizer steps per fit.
    min_epochs, max_epochs : int
        Bounds on passes over the labeled set.
    batch_size : int
        The largest batch: each epoch is cut into ``ceil(labels / batch_size)`` batches of
        equal size (130 labels at 32 give five batches of 26), so no epoch ends on a tiny batch.
    lr, weight_decay : float
        Adam's learning rate and L2 weight decay.
    inference_batch_size : int
        Chunk size for probabilities and embeddings over the pool.
    mc_samples : int
        T, the number of MC-dropout passes for the Bayesian strategies.
    early_stopping : bool
        Hold out ``val_fraction`` of the labels (at least ``min_val`` of them) and stop when
        their accuracy has not improved for ``patience`` epochs, keeping the best weights.
        Off by default: with a few dozen labels the slice costs labels and its accuracy is noise.
        Used only when at least ``4 * min_val`` labels exist.
    warm_start : bool
        Start each fit from the newest model's weights instead of fresh ones (when the class
        list did not change). Off by default, for the reason above.
    ensemble_size : int
        Members trained per fit (different seeds) for the committee strategies
        (``member_probs``); 1 = a single model.
    loss_head : bool
        Give the default models a loss-prediction head, trained with the margin ranking loss
        (Yoo & Kweon 2019), for the ``learning_loss`` strategy. A session turns it on by itself
        when its strategy needs ``loss_pred``.
    deepfool_iters : int
        DeepFool iterations for the ``dfal`` strategy's distances.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Mixed precision on CUDA (``"auto"``: bf16 where the GPU supports it, else fp32). The
        CPU always computes in fp32.
    augment : {"auto", "affine", "off"}
        Random affine augmentation of each training batch (rotation up to 10 degrees, scale
        0.9-1.1, shifts up to 2 pixels), on the device, vectorized. ``"auto"`` turns it on for
        image batches (N, C, H, W) of at least 16 pixels. With a few dozen labels this is what
        makes them count: on MNIST it is worth several points of accuracy at 50-100 labels
        (``benchmarks/label_efficiency.py``).
    pseudo_labels : float
        Semi-supervised option (0 = off): after the fit, pool samples the model predicts with
        at least this confidence get their predicted class as a label (``pseudo_per_class``
        most confident per class at most) and a fresh model is fitted on labels + pseudo-labels.
        Single-label data only. 0.95 is a good start.
    pseudo_per_class : int
        Cap on pseudo-labels per class (keeps them balanced).
    label_spreading : bool
        Semi-supervised option: before each fit the labels spread over a k-nearest-neighbour
        graph of the whole pool (label spreading, Zhou et al. 2003, alpha 0.99), and the model
        trains on the labels (repeated to weigh as much) and on every pool sample the spreading
        reached, with its spread class. The graph is built on the model's inputs (an
        encoder's embeddings, else the flattened inputs) once per pool. It is what makes a
        few dozen labels count on data whose neighbours share classes: on digits, 20 labels
        give about 0.94 (``benchmarks/label_efficiency.py``). Single-label data only; not
        together with ``pseudo_labels`` or ``early_stopping``. The pool joins the labels, so
        ``min_epochs`` counts passes over both: keep it at 1 with large pools. Every sample
        the spreading reached is a target, skipped ones included.
    spread_neighbors : int
        k of the graph (each sample's k nearest neighbours, made symmetric).
    spread_balance : float
        How much a class's number of labels is discounted in the spreading (0 to 1): each
        class's spread values are divided by its label count to this power before each pool
        sample takes the strongest class. Active learning labels classes unevenly (many
        labels near the boundaries the model is unsure of), and in plain spreading (0) a class
        labeled often spreads over its neighbours' clusters; 1 weighs every class the same
        whatever its labels. 0.5: on digits from 20 balanced labels with ``auto``, the spread
        labels' accuracy over the pool rises from 0.971 to 0.986 at 50 labels and from 0.982
        to 0.994 at 80, and on MNIST from 0.924 to 0.936 at 30 (5 seeds; 1 does as well up to
        80 labels on digits, then falls below plain spreading).
    spread_max_pool : int
        Pools larger than this are spread over a fixed random subset of this many samples
        (plus the labeled ones): the graph costs ``spread_max_pool**2 * D`` once.
    spread_vote : float
        With ``label_spreading``: the weight (0 to 1) of a vote in the model's predictions.
        The model's probabilities are blended with the share of each class among the
        ``spread_vote_k`` nearest of the fit's labeled and spread-labeled pool samples (on the
        model's inputs, like the graph); 0 turns the vote off. A linear head over an embedding
        cannot follow the pool's neighbourhoods that the spread labels come from, and the vote
        does: on digits from no labels with ``auto``, 0.99 at 100 labels against 0.982
        without the vote. The model keeps those samples' inputs (the *bank*: up to
        ``spread_max_pool * D`` floats) and saves them with its weights. Each prediction pass
        costs ``inputs * bank * D`` multiply-adds for the vote (chunked, on the session's
        device).
    spread_vote_k : int
        How many nearest samples vote.
    """

    steps: int = 500
    min_epochs: int = 1
    max_epochs: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    inference_batch_size: int = 2048
    mc_samples: int = 20
    early_stopping: bool = False
    val_fraction: float = 0.2
    min_val: int = 10
    patience: int = 20
    warm_start: bool = False
    ensemble_size: int = 1
    loss_head: bool = False
    deepfool_iters: int = 50
    precision: str = "auto"
    augment: str = "auto"
    pseudo_labels: float = 0.0
    pseudo_per_class: int = 200
    label_spreading: bool = False
    spread_neighbors: int = 7
    spread_balance: float = 0.5
    spread_max_pool: int = 20_000
    spread_vote: float = 0.5
    spread_vote_k: int = 10

    def validated(self, where: str = "TrainConfig", *, multi_label: bool = False) -> TrainConfig:
        """Check every field (raising errors that name it); ``multi_label``: for that data."""
        check_int(self.steps, "steps", where, lo=1)
        check_int(self.min_epochs, "min_epochs", where, lo=1)
        check_int(self.max_epochs, "max_epochs", where, lo=self.min_epochs)
        check_int(self.batch_size, "batch_size", where, lo=1, hi=1 << 16)
        check_real(self.lr, "lr", where, lo=0.0, lo_open=True)
        check_real(self.weight_decay, "weight_decay", where, lo=0.0)
        check_int(self.inference_batch_size, "inference_batch_size", where, lo=1)
        check_int(self.mc_samples, "mc_samples", where, lo=2, hi=1000)
        check_real(self.val_fraction, "val_fraction", where, lo=0.0, hi=0.5, lo_open=True)
        check_int(self.min_val, "min_val", where, lo=1)
        check_int(self.patience, "patience", where, lo=1)
        check_int(self.ensemble_size, "ensemble_size", where, lo=1, hi=50)
        check_int(self.deepfool_iters, "deepfool_iters", where, lo=1, hi=1000)
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise param_error(
                "precision", where, "'auto', 'fp32', 'bf16' or 'fp16'", self.precision
            )
        if self.augment not in ("auto", "affine", "off"):
            raise param_error("augment", where, "'auto', 'affine' or 'off'", self.augment)
        check_real(self.pseudo_labels, "pseudo_labels", where, lo=0.0, hi=1.0, hi_open=True)
        check_int(self.pseudo_per_class, "pseudo_per_class", where, lo=1)
        if multi_label and self.pseudo_labels > 0:
            raise ValueError(
                f"{where}: TrainConfig.pseudo_labels works on single-label data only; this "
                f"dataset is multi-label. Set pseudo_labels=0 (got {self.pseudo_labels})."
            )
        self._check_spreading(where, multi_label)
        return self

    def _check_spreading(self, where: str, multi_label: bool) -> None:
        if not isinstance(self.label_spreading, (bool, np.bool_)):
            raise param_error(
                "label_spreading", where, "True or False", self.label_spreading, TypeError
            )
        check_int(self.spread_neighbors, "spread_neighbors", where, lo=1, hi=1000)
        check_real(self.spread_balance, "spread_balance", where, lo=0.0, hi=1.0)
        check_int(self.spread_max_pool, "spread_max_pool", where, lo=2)
        check_real(self.spread_vote, "spread_vote", where, lo=0.0, hi=1.0)
        check_int(self.spread_vote_k, "spread_vote_k", where, lo=1, hi=1000)
        if not self.label_spreading:
            return
        clash = [
            f"{name}={value!r}"
            for name, value, off in (
                ("pseudo_labels", self.pseudo_labels, 0.0),
                ("early_stopping", self.early_stopping, False),
            )
            if value != off
        ]
        if multi_label:
            clash.append("multi-label data")
        if clash:
            raise ValueError(
                f"{where}: TrainConfig.label_spreading=True works on single-label data without "
                f"pseudo_labels or early_stopping; got {', '.join(clash)}. Turn one of them off."
            )

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes).validated()

    @classmethod
    def head(cls, **changes: Any) -> TrainConfig:
        """The schedule of a head over an encoder's embeddings, what ``Session(encoder=...)``
        uses by default: 100 steps of up to 256 labels at lr 1e-2, weight decay 1e-4, no
        augmentation (a linear model converges fast, so a fit takes milliseconds and the
        session can learn from every label). ``changes`` go on top:
        ``TrainConfig.head(label_spreading=True)``."""
        base = cls(steps=100, batch_size=256, lr=1e-2, weight_decay=1e-4, augment="off")
        return base.with_(**changes)


@dataclass
class FitState:
    """What callbacks see; also the progress that views observe."""

    model: nn.Module
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float = math.nan
    samples_seen: int = 0
    started: float = field(default_factory=time.perf_counter)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def samples_per_second(self) -> float:
        s = self.seconds
        return self.samples_seen / s if s > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left, from the pace so far."""
        if self.step == 0:
            return math.nan
        return self.seconds * (self.steps - self.step) / self.step


class Callback:
    """Hooks of the training loop; every hook is a no-op unless overridden.

    ``on_epoch_end`` and ``on_batch_end`` may return True to stop the fit early (a returned
    flag, not an exception).
    """

    def on_fit_begin(self, state: FitState) -> None:
        """Before the first step."""

    def on_epoch_begin(self, state: FitState) -> None:
        """Before each pass over the labeled set."""

    def on_batch_end(self, state: FitState) -> bool | None:
        """After each optimizer step; return True to stop."""
        return None

    def on_epoch_end(self, state: FitState) -> bool | None:
        """After each pass; return True to stop."""
        return None

    def on_fit_end(self, state: FitState) -> None:
        """After the last step (also when stopped)."""


class EarlyStopping(Callback):
    """Stop when accuracy on a validation slice has not improved for ``patience`` epochs,
    and restore the best weights.

    Parameters
    ----------
    X_val, y_val : tensors
        The validation slice (typically split off the labeled set).
    patience : int
        Epochs without improvement before stopping.
    every : int
        Evaluate every ``every`` epochs (tiny labeled sets have one-step epochs).
    """

    def __init__(
        self, X_val: torch.Tensor, y_val: torch.Tensor, patience: int = 20, every: int = 1
    ) -> None:
        self.X_val, self.y_val = X_val, y_val
        self.patience, self.every = patience, every
        self.best = -1.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0

    def on_epoch_end(self, state: FitState) -> bool | None:
        if state.epoch % self.every:
            return None
        model = state.model
        model.eval()
        with torch.inference_mode():
            out = model(self.X_val)
            if self.y_val.dim() == 2:  # multi-label: subset accuracy
                acc = float(((out > 0) == (self.y_val > 0.5)).all(1).float().mean())
            else:
                acc = float((out.argmax(1) == self.y_val).float().mean())
        model.train()
        state.metrics["val_accuracy"] = acc
        if acc > self.best:
            self.best, self.bad = acc, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad += 1
        return self.bad >= self.patience

    def on_fit_end(self, state: FitState) -> None:
        if self.best_state is not None:
            state.model.load_state_dict(self.best_state)
            state.metrics["val_accuracy"] = self.best


@dataclass(frozen=True)
class FitResult:
    """Summary of one fit."""

    epochs: int
    steps: int
    loss: float
    seconds: float
    cancelled: bool
    metrics: dict[str, float]


def _ranking_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Yoo & Kweon's margin ranking loss over the pairs (first half, second half) of a batch."""
    half = pred.shape[0] // 2
    if half == 0:
        return pred.sum() * 0.0
    sign = torch.sign(target[:half] - target[half : 2 * half])
    return torch.clamp(margin - sign * (pred[:half] - pred[half : 2 * half]), min=0).mean()


def _augments(config: TrainConfig, X: torch.Tensor) -> bool:
    if config.augment == "auto":
        return X.dim() == 4 and min(X.shape[2:]) >= 16
    return config.augment == "affine"


def affine_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (up to 10 degrees), scale (0.9-1.1) and shift (up to 2 pixels) per image.

    One ``affine_grid`` + ``grid_sample`` for the whole batch; the random draws come from
    ``gen`` (CPU), so a seeded fit is reproducible. Borders repeat the edge pixels.
    """
    b, _, h, w = x.shape
    draws = torch.rand(b, 4, generator=gen) * 2 - 1
    angle = draws[:, 0] * math.radians(10)
    scale = 1 + 0.1 * draws[:, 1]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    # affine_grid's coordinates run from -1 to 1 over the image: one pixel is 2 / size.
    theta = torch.stack(
        [
            torch.stack([cos, -sin, draws[:, 2] * 4 / w], 1),
            torch.stack([sin, cos, draws[:, 3] * 4 / h], 1),
        ],
        1,
    ).to(device=x.device, dtype=x.dtype)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None: plain fp32)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _adam(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam, fused where torch has a fused kernel for the parameters (CPU and CUDA, floating
    point): one kernel per step instead of a dozen small ones, about a tenth of a head fit's time.
    """
    params = list(model.parameters())
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
        for p in params
    )
    if fused:
        try:
            return torch.optim.Adam(
                params, lr=config.lr, weight_decay=config.weight_decay, fused=True
            )
        except RuntimeError:  # torch before 2.4 has no fused Adam on the CPU
            pass
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    seed: int = 0,
) -> FitResult:
    """Fit ``model`` on ``(X, y)`` in place: the single training loop of the package.

    ``X`` and ``y`` should already be on the model's device (the labeled set is small, so it is
    moved once rather than per batch). Randomness (shuffling, dropout) is seeded by ``seed``
    without touching the caller's global torch RNG state beyond this call.

    Returns
    -------
    FitResult
        ``cancelled`` is True when ``stop_event`` was set (the model is then unfinished);
        a callback that stops the fit early (early stopping) is a normal finish.
    """
    n = int(X.shape[0])
    if n == 0:
        raise ValueError("fit needs at least one labeled sample. Got 0.")
    per_epoch = math.ceil(n / min(config.batch_size, n))
    epochs = int(np.clip(math.ceil(config.steps / per_epoch), config.min_epochs, config.max_epochs))
    state = FitState(model=model, epochs=epochs, steps=epochs * per_epoch)
    optimizer = _adam(model, config)
    amp_dtype = autocast_dtype(config.precision, X.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    head = getattr(model, "loss_head", None)
    reduction = "none" if head is not None else "mean"
    multi_hot = y.dim() == 2  # multi-label targets: one independent sigmoid per class
    loss_fn: nn.Module = (
        nn.BCEWithLogitsLoss(reduction=reduction)
        if multi_hot
        else nn.CrossEntropyLoss(reduction=reduction)
    )
    captured: list[torch.Tensor] = []
    hook = None
    if head is not None:
        from dal_widgets.training._models import classifier_layer

        hook = classifier_layer(model).register_forward_pre_hook(
            lambda _m, args: captured.append(args[0])
        )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    augment = _augments(config, X)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    standardize = getattr(model, "standardize", None)
    standardized = getattr(model, "forward_standardized", None)
    if standardize is not None and callable(standardized) and not augment:
        # Standardize the labeled set once, not once per step: a fifth of a head fit's time.
        with torch.no_grad():
            X = standardize(X)
        forward = standardized
    stopped = cancelled = False
    devices = [X.device] if X.device.type == "cuda" else []
    with seeded(seed, devices):  # alone on the global generator: dropout draws from it
        model.train()
        for cb in callbacks:
            cb.on_fit_begin(state)
        for epoch in range(epochs):
            state.epoch = epoch
            for cb in callbacks:
                cb.on_epoch_begin(state)
            order = torch.randperm(n, generator=gen).to(X.device)
            # per_epoch batches of equal size (+-1): 130 labels in batches of 32 give five of
            # 26, not four of 32 and one of 2 whose noisy step would weigh as much as the rest.
            for idx in torch.tensor_split(order, per_epoch):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(
                    X.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    captured.clear()
                    xb = affine_augment(X[idx], gen) if augment else X[idx]
                    loss = loss_fn(forward(xb), y[idx])
                    if head is not None:
                        if multi_hot:
                            loss = loss.mean(dim=1)  # one loss per sample, as for single labels
                        # Yoo & Kweon: the head stops shaping the features after 60% of training.
                        feats = captured[-1].flatten(1)
                        if state.step >= 0.6 * state.steps:
                            feats = feats.detach()
                        loss = loss.mean() + _ranking_loss(head(feats).squeeze(1), loss.detach())
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                state.step += 1
                state.samples_seen += int(idx.shape[0])
                state.loss = float(loss.detach())
                if any([bool(cb.on_batch_end(state)) for cb in callbacks]):
                    stopped = True
                if stop_event is not None and stop_event.is_set():
                    stopped = cancelled = True
                if stopped:
                    break
            if stopped:
                break
            if any([bool(cb.on_epoch_end(state)) for cb in callbacks]):
                stopped = True
                break
        for cb in callbacks:
            cb.on_fit_end(state)
    if hook is not None:
        hook.remove()
    model.eval()
    return FitResult(
        epochs=state.epoch + 1,
        steps=state.step,
        loss=state.loss,
        seconds=state.seconds,
        cancelled=cancelled,
        metrics=dict(state.metrics),
    )
