"""Pretrained encoders: torchvision classification networks and sentence-transformers models."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from dal_widgets._checks import DataNotFoundError, check_int, param_error, short_repr
from dal_widgets.encoders._base import Encoder, from_module, weights_digest

__all__ = ["sentence_transformer", "torchvision"]


def _require(module: str, extra: str, where: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{where} needs the {module!r} package, which is not installed. Install it with "
            f"`pip install 'dal-widgets[{extra}]'` (or `pip install {module.replace('_', '-')}`)."
        ) from None


def _strip_head(model: Any) -> Any:
    """Replace the network's last ``nn.Linear`` (its classifier) by an identity: the output is
    then the penultimate features (resnet ``fc``, efficientnet/convnext ``classifier[-1]``,
    vit ``heads.head``, swin ``head``)."""
    from torch import nn

    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError("The network has no nn.Linear classification layer to remove.")
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return model


def _state_dict_file(path: Path, where: str) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise DataNotFoundError(
            f"The 'weights' parameter of {where} names the file {str(path)!r}, which does not exist."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file
        raise ValueError(
            f"The 'weights' file {str(path)!r} of {where} could not be read as a state dict "
            f"({type(exc).__name__}: {str(exc)[:200]}). Nothing in it was unpickled."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise TypeError(
            f"The 'weights' file {str(path)!r} of {where} must hold a state dict (parameter "
            f"names to tensors). Got {short_repr(state)} instead."
        )
    return state


class _Normalize:
    """``(x - mean) / std`` per channel: the weights' own normalization, as a transform."""

    def __init__(self, mean: Any, std: Any) -> None:
        import torch

        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: Any) -> Any:
        return (x - self.mean) / self.std


def torchvision(name: str, weights: Any = "DEFAULT", *, batch_size: int = 64) -> Encoder:
    """A torchvision classification network without its classifier, as an image encoder.

    Parameters
    ----------
    name : str
        Any torchvision classification model: ``"resnet18"``, ``"resnet50"``,
        ``"efficientnet_b0"``, ``"convnext_tiny"``, ``"vit_b_16"``, ...
    weights : "DEFAULT", a weights name, a torchvision weights enum, or a path
        ``"DEFAULT"`` or a name such as ``"IMAGENET1K_V1"`` picks torchvision's weights, which
        torchvision downloads into its own cache on first use (this needs internet once). A
        path to a local state-dict file (``.pth``/``.pt`` loaded with ``weights_only=True``,
        or ``.safetensors``) needs no network.
    batch_size : int

    The images are prepared as the weights' own preprocessing says: the shorter side scaled to
    its resize size, the centre cropped to its crop size, normalized with its mean and std.
    """
    where = "encoders.torchvision"
    tv = _require("torchvision", "vision", where)
    models = tv.models
    if not isinstance(name, str):
        raise param_error("name", where, "a torchvision model name", name, TypeError)
    try:
        builder = models.get_model_builder(name)
        enum = models.get_model_weights(name)
    except ValueError:
        known = ", ".join(sorted(models.list_models(module=models))[:12])
        raise param_error(
            "name", where, f"a torchvision classification model name ({known}, ...)", name
        ) from None
    batch_size = check_int(batch_size, "batch_size", where, lo=1)
    file: Path | None = None
    if isinstance(weights, (str, os.PathLike)) and (
        isinstance(weights, os.PathLike) or weights not in ("DEFAULT", *enum.__members__)
    ):
        file = Path(weights)
        if file.suffix not in (".pth", ".pt", ".bin", ".safetensors") and not file.exists():
            raise param_error(
                "weights",
                where,
                f"'DEFAULT', one of {list(enum.__members__)}, a weights enum or a state-dict file",
                weights,
            )
        chosen = enum.DEFAULT  # preprocessing only: nothing is downloaded
        model = builder(weights=None)
        state = _state_dict_file(file, where)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(
                f"The 'weights' file {str(file)!r} of {where} does not fit {name}: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
    else:
        if isinstance(weights, str):
            chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        elif isinstance(weights, enum):
            chosen = weights
        else:
            raise param_error(
                "weights",
                where,
                f"'DEFAULT', one of {list(enum.__members__)}, a {enum.__name__} or a file path",
                weights,
                TypeError,
            )
        model = builder(weights=chosen)
    prep = chosen.transforms()
    crop = int(prep.crop_size[0])
    encoder = from_module(
        _strip_head(model),
        _Normalize(prep.mean, prep.std),
        name=name,
        image_size=crop,
        batch_size=batch_size,
    )
    encoder.resize_size = int(prep.resize_size[0]) if prep.resize_size else None
    return encoder


class _SentenceTransformer(Encoder):
    def __init__(self, model: Any, normalize: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.normalize = normalize

    def _digest(self) -> str:
        return weights_digest(self.model) + f"|normalize={self.normalize}"

    def _encode(self, batch: Any, device: Any) -> Any:
        return self.model.encode(
            list(batch),
            batch_size=len(batch),
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
            device=str(device),
        )


def sentence_transformer(
    name_or_path: Any, *, normalize: bool = True, batch_size: int = 64
) -> Encoder:
    """A sentence-transformers model as a text encoder.

    Parameters
    ----------
    name_or_path : str or path
        A local model folder (works offline), or a hub name such as ``"all-MiniLM-L6-v2"``
        (sentence-transformers downloads it into its own cache on first use).
    normalize : bool
        L2-normalize the embeddings (cosine geometry, as these models are trained for).
    batch_size : int
    """
    where = "encoders.sentence_transformer"
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise param_error(
            "name_or_path", where, "a hub model name or a local folder", name_or_path, TypeError
        )
    st = _require("sentence_transformers", "text", where)
    batch_size = check_int(batch_size, "batch_size", where, lo=1)
    text = os.fspath(name_or_path)
    try:
        model = st.SentenceTransformer(text, device="cpu")
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"The 'name_or_path' parameter of {where} must be a sentence-transformers model "
            f"folder or hub name. Loading {text!r} failed ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Offline, pass the folder of a downloaded model."
        ) from None
    model.eval()
    label = Path(text).name if os.path.isdir(text) else text
    return _SentenceTransformer(
        model,
        bool(normalize),
        name=label if label != "model" else Path(text).parent.name,
        kinds=("text",),
        batch_size=batch_size,
        where=where,
    )
