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

import math
from typing import Any

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN", "classifier_layer", "default_model", "has_dropout"]


def loss_prediction_head(embed_dim: int) -> nn.Module:
    """A small head that predicts a sample's loss from its embedding (Yoo & Kweon, CVPR 2019).

    The paper's module reads features from several blocks; ours reads the penultimate
    embedding only (the models here are small), which keeps it model-agnostic.
    """
    return nn.Sequential(nn.Linear(embed_dim, 64), nn.ReLU(), nn.Linear(64, 1))


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
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.3,
        loss_head: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, n_classes)
        self.loss_head = loss_prediction_head(width) if loss_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def mc_split(self) -> tuple[nn.Module, nn.Module]:
        """``(prefix, rest)``: the layers before the first dropout run once per MC-dropout chunk."""
        return _split_at_first_dropout(self)


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

    For models whose forward is ``classifier(features(x))`` with ``features`` a Sequential.
    The modules are shared, not copied, so dropout hooks on ``rest`` see the same layers.
    """
    layers = list(model.features)  # type: ignore[arg-type]
    cut = next(
        (i for i, m in enumerate(layers) if isinstance(m, nn.modules.dropout._DropoutNd)),
        len(layers),
    )
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:], model.classifier)


def default_model(
    input_shape: tuple[int, ...], n_classes: int, kind: str, *, loss_head: bool = False
) -> nn.Module:
    """The model sized from the data: a CNN for images of 16 pixels or more, else an MLP.

    8x8 digits get an MLP: at that size convolutions buy little and cost time.
    """
    if kind == "image" and len(input_shape) == 3 and min(input_shape[1:]) >= 16:
        return SmallCNN(input_shape[0], n_classes, loss_head=loss_head)
    return MLP(int(math.prod(input_shape)), n_classes, loss_head=loss_head)


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


def save_checkpoint(path: Any, model: nn.Module, config: dict[str, Any]) -> tuple[str, str]:
    """Write ``model``'s state_dict to ``path`` and ``config`` (JSON) beside it (``.json``).

    Only tensors are saved, so :func:`load_checkpoint` can load with ``weights_only=True``.
    """
    import json
    import os
    from pathlib import Path

    target = Path(path)
    meta = target.with_suffix(".json")
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, target)
    meta.write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    return str(target), str(meta)


def load_checkpoint(path: Any, model: nn.Module) -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` into ``model`` (``weights_only=True``).

    Returns the JSON config (empty when the ``.json`` file is missing).

    Raises
    ------
    ValueError
        When the file is not a checkpoint (nothing is unpickled beyond tensors).
    """
    import json
    import pickle
    from pathlib import Path

    target = Path(path)
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ValueError(
            f"The 'path' parameter of load_checkpoint must be a checkpoint written by save_checkpoint. {str(target)!r} is not one ({type(exc).__name__})."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"The 'path' parameter of load_checkpoint must be a checkpoint of tensors. {str(target)!r} holds {type(state).__name__}."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"The checkpoint {str(target)!r} does not fit this model: {str(exc).splitlines()[0]}"
        ) from None
    meta = target.with_suffix(".json")
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
