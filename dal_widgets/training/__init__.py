"""Models, the single fit loop with callbacks, and batched inference on the session's device."""

from __future__ import annotations

from dal_widgets.training._arrays import MODEL_ARRAYS, PoolArrays
from dal_widgets.training._checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
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
from dal_widgets.training._metrics import evaluate_model, held_out_metrics
from dal_widgets.training._models import (
    MLP,
    EmbeddingHead,
    FeatureDropout,
    ModelFactory,
    SmallCNN,
    Standardize,
    classifier_layer,
    default_model,
    has_dropout,
)
from dal_widgets.training._spreading import SpreadVote
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
    "EmbeddingHead",
    "FeatureDropout",
    "FitResult",
    "FitState",
    "ModelFactory",
    "ModelVersion",
    "PoolArrays",
    "SmallCNN",
    "SpreadVote",
    "Standardize",
    "TrainConfig",
    "Trainer",
    "TrainingSet",
    "affine_augment",
    "checkpoint_config",
    "classifier_layer",
    "default_model",
    "evaluate_model",
    "fit",
    "has_dropout",
    "held_out_metrics",
    "load_checkpoint",
    "predict",
    "resolve_device",
    "save_checkpoint",
    "weights_key",
]
