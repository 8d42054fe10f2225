"""Model checkpoints: one torch file holding the state dict and the JSON config.

Written atomically (a temporary file beside the target, fsync, rename; see ``dal_widgets._files``)
and loaded with ``torch.load(..., weights_only=True)``: tensors and plain values only. The
earlier two-file format (a state dict with its config in a ``.json`` beside it) still loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dal_widgets._checks import DataNotFoundError, param_error, short_repr
from dal_widgets._files import check_path_param, write_atomically
from dal_widgets.training._models import Standardize

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "checkpoint_config",
    "load_checkpoint",
    "save_checkpoint",
]


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
    target = Path(check_path_param(path, "path", where))
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


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save wraps a failed write in a RuntimeError."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def checkpoint_config(
    model: nn.Module,
    *,
    input_shape: Any,
    classes: list[str],
    version: Any,
    dataset_name: str,
    fingerprint: str,
    train_config: Any,
) -> dict[str, Any]:
    """The config a session saves with its model: what :func:`load_checkpoint` checks
    (classes, dataset fingerprint) and what a reader wants to know (labels seen, settings)."""
    return {
        "model_class": type(model).__name__,
        "input_shape": [int(d) for d in input_shape],
        "classes": list(classes),
        "version": version.version,
        "n_labels": version.n_labels,
        "dataset": dataset_name,
        "dataset_fingerprint": fingerprint,
        "train_config": dict(train_config.__dict__),
    }


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
    existed = target.exists()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)

    try:
        write_atomically(target, write)
    except (OSError, RuntimeError) as exc:  # torch wraps a failed write in a RuntimeError
        cause = _os_error_in(exc)
        reason = (cause.strerror or str(cause)) if cause is not None else str(exc)
        kept = "the checkpoint already there is unchanged" if existed else "no file was left"
        raise CheckpointWriteError(
            f"{where} could not write {str(target)!r}: {reason}. Nothing was written ({kept}).",
            cause.errno if cause is not None else None,
            str(target),
        ) from None
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
        # "+<encoder id>" marks a head over an encoder's embeddings.
        other = " or encoder" if "+" in saved_fp + fingerprint else ""
        raise CheckpointMismatchError(
            f"The checkpoint {source!r} was trained on another dataset{other}: {saved_name!r} "
            f"(fingerprint {saved_fp}), and this one is {this_name!r} (fingerprint "
            f"{fingerprint}). {override}"
        )


def _fit_state(model: nn.Module, state: dict[str, Any], source: str) -> list[Standardize]:
    """Check keys and shapes before anything is copied; the Standardize layers the checkpoint
    does not know (it predates them, or came from a model without one) are returned."""
    expected = model.state_dict()
    unknown: list[Standardize] = []
    allowed: set[str] = set()
    resized: set[str] = set()  # data-sized buffers (a SpreadVote's bank): any saved shape
    for name, module in model.named_modules():
        for buffer in getattr(module, "resizable_buffers", ()):
            resized.add(f"{name}.{buffer}" if name else buffer)
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
        if k in state and k not in resized and state[k].shape != expected[k].shape
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


def _vote_target(model: nn.Module, state: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Where the weights go when one side votes (``TrainConfig.spread_vote``) and the other
    does not: a model saved without a vote loads into a voting model's wrapped model (which
    votes again after its next fit); a voting model's weights load without their bank."""
    from dal_widgets.training._spreading import SpreadVote

    votes = "bank" in state and any(k.startswith("model.") for k in state)
    if isinstance(model, SpreadVote) and not votes:
        return model.model, state
    if votes and not isinstance(model, SpreadVote):
        return model, {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return model, state


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
    check_path_param(path, "path", where)
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
    model, state = _vote_target(model, state)
    unknown = _fit_state(model, state, str(target))
    model.load_state_dict(state, strict=not unknown)
    for layer in unknown:
        layer.reset_identity()
    return config
