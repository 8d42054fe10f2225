"""Default models and the protocol for penultimate embeddings.

Any ``torch.nn.Module`` that maps a batch of inputs to logits works. Embeddings (for the map
and the diversity strategies) are the *input of the model's classifier layer*: the module named
by the model's ``classifier`` attribute if it has one, else its last ``nn.Linear``. So a model
``Sequential(..., nn.Linear(128, 10))`` gives 128-dimensional embeddings with no extra code.

A model may also define ``mc_split()`` returning ``(prefix, rest)`` with
``model(x) == rest(prefix(x))`` and no dropout in ``prefix``: MC-dropout inference then runs
``prefix`` once per chunk and only ``rest`` T times (the default models do).
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from dal_widgets._checks import param_error, short_repr

__all__ = [
    "MLP",
    "EmbeddingHead",
    "FeatureDropout",
    "ModelFactory",
    "SmallCNN",
    "Standardize",
    "classifier_layer",
    "default_model",
    "has_dropout",
]


def loss_prediction_head(embed_dim: int) -> nn.Module:
    """A small head that predicts a sample's loss from its embedding (Yoo & Kweon, CVPR 2019).

    The paper's module reads features from several blocks; ours reads the penultimate
    embedding only (the models here are small), which keeps it model-agnostic.
    """
    return nn.Sequential(nn.Linear(embed_dim, 64), nn.ReLU(), nn.Linear(64, 1))


class Standardize(nn.Module):
    """``(x - mean) / std`` per input feature, inputs flattened to ``(N, F)``.

    The statistics are buffers, so they travel in the state dict and in checkpoints. They are
    float32 like the inputs (float64 buffers would not move to every device); they are
    *computed* in float64 by :meth:`from_inputs`, where a sum of squares of 1e15-sized values
    would lose everything or overflow in float32.

    Parameters
    ----------
    mean, std : array-like of shape (F,)
        ``std`` must be positive and finite.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Any, std: Any) -> None:
        super().__init__()
        where = "Standardize"
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float64), dtype=torch.float32)
        if mean_t.ndim != 1 or std_t.shape != mean_t.shape:
            raise ValueError(
                f"The 'mean' and 'std' parameters of {where} must be 1-D arrays of the same "
                f"length. Got shapes {tuple(mean_t.shape)} and {tuple(std_t.shape)} instead."
            )
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ValueError(
                f"The 'std' parameter of {where} must hold positive finite numbers and 'mean' "
                "finite ones (after conversion to float32)."
            )
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    @classmethod
    def from_inputs(cls, inputs: Any, *, chunk_rows: int | None = None) -> Standardize:
        """Statistics of ``inputs`` (``(N, ...)``, numpy or torch), in two float64 passes.

        The passes go over ``chunk_rows`` rows at a time (default: about 4 M values), so a big
        pool needs no float64 copy of itself. The standard deviation is the population one;
        where it is below the float32 resolution of the column's values (a constant column),
        it is set to 1, so the column is centred and not divided by zero.
        """
        return cls(*_column_stats(inputs, "Standardize.from_inputs", chunk_rows))

    def reset_identity(self) -> None:
        """Make the layer an identity (mean 0, std 1), for weights trained on raw inputs."""
        with torch.no_grad():
            self.mean.zero_()
            self.std.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"features={self.mean.numel()}"


def _column_stats(
    inputs: Any, where: str, chunk_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and floored std of ``inputs`` (see :meth:`Standardize.from_inputs`)."""
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    X = np.asarray(inputs)
    if X.ndim < 2 or X.shape[0] == 0 or X.dtype.kind not in "fiub":
        raise param_error("inputs", where, "a non-empty numeric array (N, F)", X)
    n, width = X.shape[0], math.prod(X.shape[1:])
    rows = chunk_rows or max(1, (1 << 22) // max(width, 1))
    total = np.zeros(width, np.float64)
    for start in range(0, n, rows):
        total += X[start : start + rows].reshape(-1, width).sum(0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(width, np.float64)
    for start in range(0, n, rows):  # centred second pass: no cancellation at 1e15 offsets
        centred = X[start : start + rows].reshape(-1, width).astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    std = np.sqrt(squares / n)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError(
            f"The 'inputs' parameter of {where} must hold finite numbers. Got NaN or "
            "infinite values (or values whose squares overflow float64) instead."
        )
    # float32 inputs cannot vary by less than ~1e-7 of their size: below that it is rounding.
    flat = (std <= 1e-6 * np.abs(mean)) | (std < 1e-30)
    return mean, np.where(flat, 1.0, std)


class MLP(nn.Module):
    """A two-hidden-layer perceptron with dropout, for tabular data, texts and tiny images.

    Parameters
    ----------
    in_features : int
    n_classes : int
    hidden : tuple of int
    dropout : float
        Dropout after each hidden layer (MC-dropout strategies need it).
    loss_head : bool
        Carry a loss-prediction head (for the ``learning_loss`` strategy).
    standardize : Standardize, optional
        Applied to the inputs first (see :func:`default_model`). It is an attribute of its own,
        not a layer of ``features``, so state dicts of MLPs without it keep their keys.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.3,
        loss_head: bool = False,
        standardize: Standardize | None = None,
    ) -> None:
        super().__init__()
        self.standardize = standardize
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, n_classes)
        self.loss_head = loss_prediction_head(width) if loss_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize is not None:
            x = self.standardize(x)
        return self.classifier(self.features(x))

    def forward_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass of inputs that ``standardize`` has already been applied to: a fit
        standardizes its labeled set once instead of once per step (see :func:`fit`)."""
        return self.classifier(self.features(x))

    def mc_split(self) -> tuple[nn.Module, nn.Module]:
        """``(prefix, rest)``: the layers before the first dropout run once per MC-dropout chunk."""
        return _split_at_first_dropout(self)


class FeatureDropout(nn.Dropout):
    """Dropout with one mask per batch, over the features: each step trains a random subset of
    the inputs, as each MC-dropout pass at inference uses one mask for the whole pool.

    A mask per element (``nn.Dropout``) costs one random number per input value; over a batch
    of 256 embeddings of 1,280 dimensions that was two thirds of a head fit's time on a CPU.
    """

    def keep(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """One batch's mask over the features, scaled by ``1 / (1 - p)``."""
        keep = torch.empty(shape, device=device, dtype=dtype).bernoulli_(1.0 - self.p)
        return keep / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self.keep(x.shape[1:], x.device, x.dtype)


class EmbeddingHead(MLP):
    """A linear classifier over frozen embeddings, with dropout on its input (one mask per
    batch: :class:`FeatureDropout`).

    Frozen foundation-model features with a light head are what makes active learning pay off
    at small budgets (Gupte et al. 2024, arXiv 2401.14555). The inputs are standardized with
    the pool's statistics; the dropout makes MC-dropout strategies work (its passes cost one
    matrix product each: :meth:`mc_split` runs the standardization once). The penultimate
    embedding is the standardized encoder embedding.
    """

    #: A pass costs little (one matrix product): PoolArrays computes its embeddings only when
    #: they are asked for, not with every pass.
    cheap_forward = True

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        dropout: float = 0.2,
        loss_head: bool = False,
        standardize: Standardize | None = None,
    ) -> None:
        super().__init__(
            in_features, n_classes, hidden=(), loss_head=loss_head, standardize=standardize
        )
        self.features = nn.Sequential(nn.Flatten(), FeatureDropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize is not None:
            x = self.standardize(x)
        return self.forward_standardized(x)

    def forward_standardized(self, x: torch.Tensor) -> torch.Tensor:
        drop = cast(FeatureDropout, self.features[1])
        linear = self.classifier
        if self.training and drop.p > 0 and self.loss_head is None and not _hooked(self):
            # One mask per batch: masking the weights' columns is the same product as masking
            # the inputs, at the weights' size (10 x D) instead of the batch's (256 x D).
            x = x.flatten(1)
            keep = drop.keep(x.shape[1:], x.device, linear.weight.dtype)
            return nn.functional.linear(x, linear.weight * keep, linear.bias)
        return self.classifier(self.features(x))


def _hooked(model: nn.Module) -> bool:
    """Whether a hook (the loss head's, a user's, a global one) would miss layers that a
    shortcut skips: then the model runs layer by layer."""
    from torch.nn.modules import module as _module

    if any(
        getattr(_module, name, None)
        for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    ):
        return True
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, kind, None) for m in model.modules() for kind in kinds)


class SmallCNN(nn.Module):
    """A small LeNet-style CNN: two 5x5 conv blocks, a dense layer with dropout, the classifier.

    Sized for CPUs: about 1 M multiply-adds per 28x28 image (a fit of 300 steps on a 2-core
    CPU takes about 2 s), yet on MNIST it matches the Gal et al. (2017) model's accuracy at
    small budgets once trained with augmentation (see ``TrainConfig.augment``). Dropout sits
    only in the dense head, so MC-dropout passes share the convolutions (:meth:`mc_split`).
    Works for any image size of at least 16 pixels (adaptive pooling before the dense layer).
    ``loss_head=True`` adds a loss-prediction head (for the ``learning_loss`` strategy).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 16,
        embed_dim: int = 128,
        dropout: float = 0.5,
        loss_head: bool = False,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 5),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, embed_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(embed_dim, n_classes)
        self.loss_head = loss_prediction_head(embed_dim) if loss_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def mc_split(self) -> tuple[nn.Module, nn.Module]:
        return _split_at_first_dropout(self)


def _split_at_first_dropout(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(prefix, rest)`` with ``model(x) == rest(prefix(x))`` and no dropout in ``prefix``.

    For models whose forward is ``classifier(features(standardize(x)))`` with ``features`` a
    Sequential and ``standardize`` optional. The modules are shared, not copied, so dropout
    hooks on ``rest`` see the same layers.
    """
    layers = list(model.features)  # type: ignore[arg-type]
    cut = next(
        (i for i, m in enumerate(layers) if isinstance(m, nn.modules.dropout._DropoutNd)),
        len(layers),
    )
    first = getattr(model, "standardize", None)
    before = [first] if isinstance(first, nn.Module) else []
    head = model.get_submodule("classifier")
    return nn.Sequential(*before, *layers[:cut]), nn.Sequential(*layers[cut:], head)


def default_model(
    input_shape: tuple[int, ...],
    n_classes: int,
    kind: str,
    *,
    loss_head: bool = False,
    inputs: Any = None,
    standardize: Standardize | None = None,
) -> nn.Module:
    """The model sized from the data: a CNN for images of 16 pixels or more, else an MLP.

    8x8 digits get an MLP: at that size convolutions buy little and cost time.

    Parameters
    ----------
    input_shape : tuple of int
        The shape of one sample; it must hold at least one feature.
    n_classes : int
    kind : {"image", "tabular", "text", "embedding"}
        ``"embedding"``: the inputs are an encoder's embeddings; the model is an
        :class:`EmbeddingHead`.
    loss_head : bool
        Carry a loss-prediction head (for the ``learning_loss`` strategy).
    inputs : array-like of shape (N, *input_shape), optional
        The pool's inputs. For ``kind="tabular"`` the MLP then standardizes its inputs with
        their mean and standard deviation (a :class:`Standardize` first layer, saved with the
        weights): raw columns such as Unix timestamps (~1.7e9) or 1e15-sized counts otherwise
        saturate the network, whose outputs become constant. Images (in [0, 1]) and the
        default text features (L2-normalized rows) are already scaled and are left as they are.
        Computing the statistics reads the pool twice in chunks.
    standardize : Standardize, optional
        Statistics computed once already (``Standardize.from_inputs(pool)``), instead of
        ``inputs``: a session makes many models from one pool. Copied into the model.
    """
    where = "default_model"
    shape = tuple(int(d) for d in input_shape)
    if not shape or math.prod(shape) == 0:
        raise param_error(
            "input_shape", where, "the shape of a sample with at least one feature", shape
        )
    if kind == "image" and len(shape) == 3 and min(shape[1:]) >= 16:
        return SmallCNN(shape[0], n_classes, loss_head=loss_head)
    scaled = kind in ("tabular", "embedding")
    if standardize is not None:
        standardize = copy.deepcopy(standardize) if scaled else None
    elif inputs is not None and scaled:
        X = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else inputs
        X = np.asarray(X)
        if X.ndim < 2 or tuple(X.shape[1:]) != shape:
            raise ValueError(
                f"The 'inputs' parameter of {where} must be the pool's inputs, shaped "
                f"(N, {', '.join(map(str, shape))}). Got {short_repr(X)} instead."
            )
        standardize = Standardize(*_column_stats(X, where))
    if kind == "embedding":
        return EmbeddingHead(
            math.prod(shape), n_classes, loss_head=loss_head, standardize=standardize
        )
    return MLP(math.prod(shape), n_classes, loss_head=loss_head, standardize=standardize)


def classifier_layer(model: nn.Module) -> nn.Module:
    """The layer whose input is the penultimate embedding (see the module docstring)."""
    layer = getattr(model, "classifier", None)
    if isinstance(layer, nn.Module):
        return layer
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(
            "The model has no 'classifier' attribute and no nn.Linear layer, so its penultimate "
            "embeddings cannot be found. Give it a 'classifier' attribute: the module that maps "
            "embeddings to logits."
        )
    return last


def has_dropout(model: nn.Module) -> bool:
    """Whether the model has a dropout layer (MC-dropout strategies need one)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


class ModelFactory:
    """Fresh models from what ``Session(model=...)`` accepts, checked once.

    ``"auto"`` builds :func:`default_model` (tabular inputs standardized with the pool's
    statistics, computed on the first build and reused); an ``nn.Module`` is deep-copied (its
    initial weights are the starting point of every fit); a callable
    ``model(input_shape, n_classes)`` builds a new module per fit.
    """

    def __init__(self, spec: Any, where: str = "Session") -> None:
        if isinstance(spec, str):
            if spec != "auto":
                raise param_error("model", where, "'auto'", spec)
        elif isinstance(spec, nn.Module):
            spec = copy.deepcopy(spec)
        elif not callable(spec):
            raise param_error(
                "model",
                where,
                "'auto', a torch.nn.Module or a callable(input_shape, n_classes)",
                spec,
                TypeError,
            )
        self.spec = spec
        self._stats: Standardize | None = None

    def build(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        kind: str,
        *,
        loss_head: bool = False,
        pool: Any = None,
    ) -> nn.Module:
        """A new model for ``n_classes`` (``pool``: the inputs the statistics come from)."""
        if isinstance(self.spec, str):
            if kind in ("tabular", "embedding") and pool is not None and self._stats is None:
                self._stats = Standardize.from_inputs(pool)
            return default_model(
                input_shape, n_classes, kind, loss_head=loss_head, standardize=self._stats
            )
        if isinstance(self.spec, nn.Module):
            return copy.deepcopy(self.spec)
        model = self.spec(input_shape, n_classes)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"The model factory given to Session returned {short_repr(model)}, not a "
                "torch.nn.Module."
            )
        return model
