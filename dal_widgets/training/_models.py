"""Default models and the protocol for penultimate embeddings.

Any ``torch.nn.Module`` that maps a batch of inputs to logits works. Embeddings (for the map
and the diversity strategies) are the *input of the model's classifier layer*: the module named
by the model's ``classifier`` attribute if it has one, else its last ``nn.Linear``. So a model
``Sequential(..., nn.Linear(128, 10))`` gives 128-dimensional embeddings with no extra code.

A model may also define ``mc_split()`` returning ``(prefix, rest)`` with
``model(x) == rest(prefix(x))`` and no dropout in ``prefix``: MC-dropout inference then runs
``prefix`` once per chunk and only ``rest`` T times (the default models do).

Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`) are one torch file holding the
state dict and the JSON config, written atomically and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dal_widgets._checks import DataNotFoundError, param_error, short_repr

__all__ = [
    "MLP",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "SmallCNN",
    "Standardize",
    "classifier_layer",
    "default_model",
    "has_dropout",
    "load_checkpoint",
    "save_checkpoint",
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
    kind : {"image", "tabular", "text"}
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
    if standardize is not None:
        standardize = copy.deepcopy(standardize) if kind == "tabular" else None
    elif inputs is not None and kind == "tabular":
        X = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else inputs
        X = np.asarray(X)
        if X.ndim < 2 or tuple(X.shape[1:]) != shape:
            raise ValueError(
                f"The 'inputs' parameter of {where} must be the pool's inputs, shaped "
                f"(N, {', '.join(map(str, shape))}). Got {short_repr(X)} instead."
            )
        standardize = Standardize(*_column_stats(X, where))
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


# ------------------------------------------------------------------------------ checkpoints
class CheckpointError(ValueError):
    """A checkpoint cannot be written or read as asked (a bad path, a damaged file)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was made for another dataset or class list."""


class CheckpointWriteError(CheckpointError, OSError):
    """The operating system refused the write (disk full, no permission, read-only, ...).

    An ``OSError`` too, with ``errno`` and ``filename`` set, so ``except OSError`` and checks
    such as ``exc.errno == errno.ENOSPC`` work; a ``ValueError`` like every dal_widgets error.
    """

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename = errno, filename
        self.strerror = os.strerror(errno) if errno is not None else None

    def __str__(self) -> str:  # OSError would print "[Errno 28] ..." instead of the message
        return str(self.args[0])


#: Marks the one-file format: {"format", "format_version", "state_dict", "config_json"}.
_FORMAT = "dal_widgets.checkpoint"
_FORMAT_VERSION = 1


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


#: The config keys dal_widgets reads back: key -> (expected, test). Other keys pass as they are.
_CONFIG_KEYS: dict[str, tuple[str, Any]] = {
    "model_class": ("a str", lambda v: isinstance(v, str)),
    "input_shape": (
        "a list of ints >= 0",
        lambda v: isinstance(v, list) and all(_is_int(d) for d in v),
    ),
    "classes": (
        "a list of str",
        lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
    ),
    "version": ("an int >= 0", _is_int),
    "n_labels": ("an int >= 0", _is_int),
    "dataset": ("a str or null", lambda v: v is None or isinstance(v, str)),
    "dataset_fingerprint": ("a str", lambda v: isinstance(v, str)),
    "train_config": ("a JSON object", lambda v: isinstance(v, dict)),
}


def _config_problem(config: Any) -> str | None:
    """What is wrong with a decoded config, or None."""
    if not isinstance(config, dict):
        return f"must be a JSON object. Got {short_repr(config)} instead"
    for key, (expected, ok) in _CONFIG_KEYS.items():
        if key in config and not ok(config[key]):
            return f"has a bad {key!r}: {key!r} must be {expected}. Got {short_repr(config[key])} instead"
    return None


def _parse_config(text: Any, source: str) -> dict[str, Any]:
    """Decode and check a checkpoint config; errors name ``source`` (the file it came from)."""
    if not isinstance(text, str):
        raise CheckpointError(
            f"The checkpoint {source!r} is damaged: its config is {type(text).__name__}, not "
            "JSON text. Export the model again."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"The checkpoint config in {source!r} is not valid JSON ({exc.msg} at line "
            f"{exc.lineno}, column {exc.colno}): the file is truncated or damaged. Export the "
            "model again."
        ) from None
    problem = _config_problem(config)
    if problem:
        raise CheckpointError(f"The checkpoint config in {source!r} {problem}.")
    return config


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays as their Python values; anything else as its str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _check_target(path: Any, where: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise param_error("path", where, "a file path (str or os.PathLike)", path, TypeError)
    target = Path(path)
    if target.suffix.lower() == ".json":
        raise CheckpointError(
            f"The 'path' parameter of {where} must name a torch file, such as 'model.pt': a "
            "checkpoint is one torch file holding the weights and the JSON config, not JSON "
            f"itself. Got {str(target)!r} instead."
        )
    if target.is_dir():
        raise CheckpointError(
            f"The 'path' parameter of {where} must name a file, not a folder. Got the folder "
            f"{str(target)!r} instead; add a file name such as 'model.pt'."
        )
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataNotFoundError(
            f"The 'path' parameter of {where} must be in an existing folder. The folder "
            f"{str(folder)!r} {what} (path {str(target)!r}); create it first."
        )
    return target


def _tmp_is_stale(pid: int, path: str) -> bool:
    """Whether a tmp file of process ``pid`` is left over (that process is gone)."""
    if pid == os.getpid():
        return False  # another thread of this process may be writing it
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows: go by age
        with contextlib.suppress(OSError):
            return time.time() - os.stat(path).st_mtime > 86400
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False


def _remove_stale_tmp(target: Path) -> None:
    """Delete the tmp files that earlier exports of ``target``, killed or failed, left.

    Ours are ``.<name>.<pid>.<token>.tmp``; ``.<name>.tmp`` is the name earlier versions
    used (no pid, always stale). A file whose process still runs is another export in flight
    and is kept.
    """
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        parts = entry.name[len(prefix) :].split(".")  # ["tmp"] or [pid, (token,) "tmp"]
        if parts == ["tmp"]:
            stale = True
        elif len(parts) in (2, 3) and parts[0].isdigit():
            stale = _tmp_is_stale(int(parts[0]), entry.path)
        else:
            continue  # another target's file (".m.pt.bak.tmp" of "m.pt.bak") or not ours
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save wraps a failed write in a RuntimeError."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX; some file systems refuse, which is harmless)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: Any, model: nn.Module, config: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and ``config`` to one torch file, atomically.

    The file holds ``{"format", "format_version", "state_dict", "config_json"}``: tensors and
    plain str/int values only, so :func:`load_checkpoint` loads it with
    ``torch.load(..., weights_only=True)``. It is written to a tmp file beside the target
    (``.<name>.<pid>.<token>.tmp``), fsynced and renamed over the target, so a crash or a kill
    leaves the previous checkpoint or the new one, never half a file; tmp files that killed
    exports of the same target left are removed first.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write, e.g. ``"model.pt"``, in an existing folder (not a ``.json`` name).
    model : torch.nn.Module
    config : dict, optional
        JSON-serializable metadata (numpy values are converted, other objects stored as
        their str). The keys dal_widgets reads back (``classes``, ``n_labels``,
        ``dataset_fingerprint``, ...) are checked here, so a checkpoint that saves also loads.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    CheckpointError
        ``path`` is a folder or a ``.json`` name (a ValueError).
    DataNotFoundError
        The folder does not exist (a ValueError and a FileNotFoundError).
    CheckpointWriteError
        The write failed: disk full, no permission, ... (a ValueError and an OSError, with
        ``errno``). Nothing is left behind and a checkpoint already at ``path`` is unchanged.
    """
    where = "save_checkpoint"
    if not isinstance(model, nn.Module):
        raise param_error("model", where, "a torch.nn.Module", model, TypeError)
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise param_error("config", where, "a dict (JSON object)", config, TypeError)
    text = json.dumps(config, indent=2, default=_json_default)
    problem = _config_problem(json.loads(text))
    if problem:
        raise ValueError(f"The 'config' parameter of {where} {problem}.")
    target = _check_target(path, where)
    payload = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config_json": text,
    }
    _remove_stale_tmp(target)
    existed = target.exists()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, (OSError, RuntimeError)):
            raise  # KeyboardInterrupt and the like, after the cleanup
        cause = _os_error_in(exc)
        reason = (cause.strerror or str(cause)) if cause is not None else str(exc)
        kept = "the checkpoint already there is unchanged" if existed else "no file was left"
        raise CheckpointWriteError(
            f"{where} could not write {str(target)!r}: {reason}. Nothing was written ({kept}).",
            cause.errno if cause is not None else None,
            str(target),
        ) from None
    _fsync_folder(target.parent)
    return target


def _read_payload(target: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config)`` of a one-file or an old two-file checkpoint."""
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        # Damaged files make torch.load raise RuntimeError, UnpicklingError (weights_only
        # refusing a global), EOFError, OSError, KeyError, IndexError, TypeError, ... (seen by
        # fuzzing): each means "not a checkpoint", and none may escape as another type.
        raise CheckpointError(
            f"The 'path' parameter of {where} must be a checkpoint written by save_checkpoint. "
            f"{str(target)!r} is not a checkpoint, or is damaged ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})."
        ) from None
    if isinstance(payload, dict) and payload.get("format") == _FORMAT:
        version: Any = payload.get("format_version")
        if not _is_int(version, 1) or version > _FORMAT_VERSION:
            raise CheckpointError(
                f"The checkpoint {str(target)!r} has format version {short_repr(version)}; this "
                f"dal_widgets reads version {_FORMAT_VERSION}. Upgrade dal_widgets to load it."
            )
        state = payload.get("state_dict")
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CheckpointError(f"The checkpoint {str(target)!r} is damaged: no state dict.")
        return state, _parse_config(payload.get("config_json"), str(target))
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        # The two-file format of earlier versions: the state dict, and the config beside it.
        meta = target.with_suffix(".json")
        if not meta.is_file() or meta == target:
            return payload, {}
        try:
            text = meta.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"The checkpoint config {str(meta)!r} cannot be read: {exc}."
            ) from None
        return payload, _parse_config(text, str(meta))
    raise CheckpointError(
        f"The 'path' parameter of {where} must be a checkpoint written by save_checkpoint. "
        f"{str(target)!r} holds a {type(payload).__name__}, not a checkpoint."
    )


def _check_dataset(
    config: dict[str, Any],
    source: str,
    classes: Any,
    fingerprint: str | None,
    dataset_name: str | None,
) -> None:
    override = "Pass allow_other_dataset=True to load it anyway."
    saved_classes = config.get("classes")
    if classes is not None and saved_classes is not None:
        wanted = [str(c) for c in classes]
        if saved_classes != wanted:
            raise CheckpointMismatchError(
                f"The checkpoint {source!r} was trained for the classes {saved_classes}, and "
                f"this model is for the classes {wanted}: its outputs would mean other "
                f"classes. {override}"
            )
    saved_fp = config.get("dataset_fingerprint")
    if fingerprint is not None and saved_fp is not None and saved_fp != fingerprint:
        saved_name = config.get("dataset") or "an unnamed dataset"
        this_name = dataset_name or "unnamed"
        raise CheckpointMismatchError(
            f"The checkpoint {source!r} was trained on another dataset: {saved_name!r} "
            f"(fingerprint {saved_fp}), and this one is {this_name!r} (fingerprint "
            f"{fingerprint}). {override}"
        )


def _fit_state(model: nn.Module, state: dict[str, Any], source: str) -> list[Standardize]:
    """Check keys and shapes before anything is copied; the Standardize layers the checkpoint
    does not know (it predates them, or came from a model without one) are returned."""
    expected = model.state_dict()
    unknown: list[Standardize] = []
    allowed: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, Standardize):
            keys = {f"{name}.mean", f"{name}.std"}
            if not keys & state.keys():
                unknown.append(module)
                allowed |= keys
    missing = sorted(set(expected) - set(state) - allowed)
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} is {tuple(state[k].shape)} in the checkpoint and {tuple(expected[k].shape)} in the model"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if shapes:
        problems.append("; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
        )
    if problems:
        raise CheckpointError(
            f"The checkpoint {source!r} does not fit this model: {'; '.join(problems)}. Was it "
            "saved from another architecture or class list?"
        )
    return unknown


def load_checkpoint(
    path: Any,
    model: nn.Module,
    *,
    classes: Any = None,
    fingerprint: str | None = None,
    dataset_name: str | None = None,
    allow_other_dataset: bool = False,
) -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` into ``model`` (``weights_only=True``).

    Reads the one-file format and the two-file format of earlier versions (a state dict with
    its config in a ``.json`` beside it). Everything is checked before ``model`` changes: a
    refused checkpoint leaves it as it was. A :class:`Standardize` layer of ``model`` that the
    checkpoint does not know becomes an identity, since those weights were trained on raw
    inputs.

    Parameters
    ----------
    path : str or os.PathLike
    model : torch.nn.Module
        A fresh model of the architecture that was saved.
    classes : sequence of str, optional
        The class list the model is for; refused when the checkpoint records another.
    fingerprint : str, optional
        The dataset's fingerprint (``Dataset.fingerprint``); refused when the checkpoint
        records another.
    dataset_name : str, optional
        The dataset's name, for the error message.
    allow_other_dataset : bool
        Skip both comparisons (to load a model on purpose into another dataset's session).
        A checkpoint that records neither is never compared.

    Returns
    -------
    dict
        The config (empty for an old checkpoint without its ``.json``).

    Raises
    ------
    DataNotFoundError
        ``path`` does not exist (a ValueError and a FileNotFoundError).
    CheckpointMismatchError
        The checkpoint was made for other classes or another dataset.
    CheckpointError
        The file is not a checkpoint, is damaged, has a bad config or does not fit ``model``.
        Nothing is unpickled beyond tensors and plain values.
    """
    where = "load_checkpoint"
    if not isinstance(path, (str, os.PathLike)):
        raise param_error("path", where, "a file path (str or os.PathLike)", path, TypeError)
    if not isinstance(model, nn.Module):
        raise param_error("model", where, "a torch.nn.Module", model, TypeError)
    target = Path(path)
    if not target.exists():
        raise DataNotFoundError(
            f"The 'path' parameter of {where} must be an existing checkpoint file. "
            f"{str(target)!r} does not exist."
        )
    if target.is_dir():
        raise CheckpointError(
            f"The 'path' parameter of {where} must be a checkpoint file. Got the folder "
            f"{str(target)!r} instead."
        )
    state, config = _read_payload(target, where)
    if not allow_other_dataset:
        _check_dataset(config, str(target), classes, fingerprint, dataset_name)
    unknown = _fit_state(model, state, str(target))
    model.load_state_dict(state, strict=not unknown)
    for layer in unknown:
        layer.reset_identity()
    return config
