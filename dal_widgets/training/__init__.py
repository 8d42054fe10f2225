"""Models, the single fit loop with callbacks, and batched inference on the session's device."""

from __future__ import annotations

from dal_widgets.training._arrays import MODEL_ARRAYS, PoolArrays
from dal_widgets.training._device import resolve_device
from dal_widgets.training._fit import (
    Callback,
    EarlyStopping,
    FitResult,
    FitState,
    TrainConfig,
    affine_augment,
    fit,
)
from dal_widgets.training._inference import INFERABLE, predict
from dal_widgets.training._models import (
    MLP,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    SmallCNN,
    Standardize,
    classifier_layer,
    default_model,
    has_dropout,
    load_checkpoint,
    save_checkpoint,
)
from dal_widgets.training._trainer import ModelVersion, Trainer, TrainingSet, weights_key

__all__ = [
    "INFERABLE",
    "MLP",
    "MODEL_ARRAYS",
    "Callback",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "EarlyStopping",
    "FitResult",
    "FitState",
    "ModelVersion",
    "PoolArrays",
    "SmallCNN",
    "Standardize",
    "TrainConfig",
    "Trainer",
    "TrainingSet",
    "affine_augment",
    "classifier_layer",
    "default_model",
    "fit",
    "has_dropout",
    "load_checkpoint",
    "predict",
    "resolve_device",
    "save_checkpoint",
    "weights_key",
]
