"""Encoders turn a batch of raw samples into float32 embeddings ``(n, D)``.

An encoder has a stable :attr:`Encoder.id` (its name plus a hash of its weights or code) that
keys the embedding cache, so a changed model never reads another model's embeddings.

What an encoder receives, by data kind (:meth:`Encoder.inputs`):

- images: a float32 tensor ``(n, C, S, S)`` in [0, 1], ``C = 3`` for encoders that want RGB,
  ``S`` the encoder's ``image_size`` (or the dataset's own size when it has none). Image files
  are decoded in batches at that size (JPEG in draft mode), never all at once;
- texts: a list of str;
- tabular rows: a float32 tensor ``(n, F)``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, param_error, short_repr

__all__ = [
    "Encoder",
    "EncoderError",
    "EncoderOutputError",
    "from_callable",
    "from_module",
    "weights_digest",
]

_KINDS = ("image", "text", "tabular")
_HOLDS = {"image": "images", "text": "texts", "tabular": "tabular rows"}


class EncoderError(ValueError):
    """An encoder could not encode a batch (its model or transform raised)."""


class EncoderOutputError(EncoderError):
    """An encoder returned something other than finite float embeddings ``(n, D)``."""


def code_digest(fn: Any, version: str = "") -> str:
    """A hash of a function's name and bytecode (a callable object's ``__call__``), and of
    ``version``: what identifies code that has no weights."""
    call = vars(type(fn)).get("__call__")  # a callable object: its method's code
    code = getattr(fn, "__code__", None) or getattr(call, "__code__", None)
    h = hashlib.sha256(f"{version}|{getattr(fn, '__qualname__', type(fn).__qualname__)}".encode())
    stack = [] if code is None else [code]
    while stack:  # the function's code and every code object nested in it (comprehensions)
        c = stack.pop()
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())  # np.sin and np.cos differ only here
        h.update(repr([k for k in c.co_consts if isinstance(k, (int, float, str))]).encode())
        stack += [k for k in c.co_consts if hasattr(k, "co_code")]
    return h.hexdigest()


def _batch_text(batch: Any) -> str:
    shape = getattr(batch, "shape", None)
    if shape is not None:
        return f"a {getattr(batch, 'dtype', '')} batch of shape {tuple(shape)}"
    return f"a {type(batch).__name__} of {len(batch)}"


def weights_digest(module: Any) -> str:
    """A hash of a module's parameters and buffers (names, shapes, dtypes and values)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _clean_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise param_error("name", where, "a non-empty str", name, TypeError)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name.strip())[:64]


class Encoder:
    """Base class of encoders.

    Subclasses implement :meth:`_encode` (a prepared batch to an array ``(n, D)``) and
    :meth:`_digest` (what identifies their weights or code).

    Parameters
    ----------
    name : str
        Shown in views and part of :attr:`id`.
    kinds : sequence of {"image", "text", "tabular"}
        The data kinds the encoder accepts.
    image_size : int, optional
        Images are resized to ``image_size`` x ``image_size`` before encoding.
    rgb : bool
        Give images three channels (gray images are repeated).
    batch_size : int
        Samples per batch when embedding a dataset.
    """

    #: Whether a ``Session`` over this encoder also spreads labels over the pool by default
    #: (``TrainConfig.head(label_spreading=True)`` instead of ``TrainConfig.head()``, on
    #: single-label data): True for an encoder learned on the pool itself, whose
    #: neighbourhoods are what it learned.
    spreads_by_default: bool = False

    def __init__(
        self,
        name: str,
        *,
        kinds: Sequence[str],
        image_size: int | None = None,
        rgb: bool = True,
        batch_size: int = 64,
        where: str = "Encoder",
    ) -> None:
        self.name = _clean_name(name, where)
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in _KINDS]
        if not kinds or bad:
            raise param_error("kinds", where, f"a non-empty subset of {_KINDS}", kinds)
        self.kinds = kinds
        self.image_size = (
            None if image_size is None else check_int(image_size, "image_size", where, lo=8)
        )
        self.rgb = bool(rgb)
        self.batch_size = check_int(batch_size, "batch_size", where, lo=1, hi=1 << 16)
        #: Image files: the shorter side is scaled to this before the centre crop to
        #: ``image_size`` (None: straight to ``image_size``).
        self.resize_size: int | None = None
        self._id: str | None = None
        self._dim: int | None = None

    # ------------------------------------------------------------------ identity
    @property
    def id(self) -> str:
        """``<name>-<12 hex digits>``: the name plus a hash of the weights (or code) and of the
        settings that change the embeddings. Caches are keyed by it."""
        if self._id is None:
            h = hashlib.sha256(self._digest().encode())
            h.update(f"|{self.image_size}|{self.resize_size}|{self.rgb}".encode())
            self._id = f"{self.name}-{h.hexdigest()[:12]}"
        return self._id

    @property
    def dim(self) -> int | None:
        """The embedding width D (None until the first batch was encoded)."""
        return self._dim

    def _digest(self) -> str:
        raise NotImplementedError

    def _encode(self, batch: Any, device: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        dim = "?" if self._dim is None else self._dim
        return f"{type(self).__name__}({self.name!r}, kinds={list(self.kinds)}, dim={dim})"

    # ------------------------------------------------------------------ data
    def check_dataset(self, dataset: Any, where: str) -> None:
        """Raise a TypeError naming ``encoder`` when this encoder cannot read ``dataset``."""
        if dataset.kind not in self.kinds:
            raise TypeError(
                f"The 'encoder' parameter of {where} must accept {dataset.kind} data: dataset "
                f"{dataset.name!r} holds {_HOLDS[dataset.kind]}. Got {self!r}, which reads "
                f"{' and '.join(self.kinds)} data."
            )

    def inputs(self, dataset: Any, positions: Any, split: str = "pool") -> Any:
        """The raw batch for ``positions`` of the pool (``split="pool"``) or of the held-out
        split (``"eval"``), prepared as the module docstring says."""
        rows = np.asarray(positions, dtype=np.int64)
        held = split == "eval"
        if dataset.kind == "text":
            texts = dataset.eval_texts if held else dataset.texts
            if texts is None:
                raise ValueError(
                    f"Dataset {dataset.name!r} keeps no texts for its "
                    f"{'held-out split' if held else 'pool'}; a text encoder needs them. Load it "
                    "with datasets.texts(...)."
                )
            return [texts[i] for i in rows.tolist()]
        import torch

        if dataset.kind == "image":
            paths = dataset.eval_paths if held else dataset.paths
            if paths is not None:  # files: decoded per batch, at the encoder's size
                from dal_widgets.encoders._images import decode_files

                size = self.image_size or dataset.input_shape[-1]
                chosen = [paths[i] for i in rows.tolist()]
                rgb = self.rgb or dataset.input_shape[0] == 3
                return decode_files(chosen, size, rgb, self.resize_size)
            X = dataset.X_eval if held else dataset.X
            from dal_widgets.encoders._images import resize_batch

            return resize_batch(torch.as_tensor(np.asarray(X[rows])), self.image_size, self.rgb)
        X = dataset.X_eval if held else dataset.X
        return torch.as_tensor(np.asarray(X[rows], dtype=np.float32)).reshape(len(rows), -1)

    # ------------------------------------------------------------------ encoding
    def encode(self, batch: Any, device: Any = "cpu") -> np.ndarray:
        """Embeddings of one prepared batch, checked: float32 ``(n, D)``, finite, and the same
        D as every earlier batch."""
        import torch

        try:
            with torch.inference_mode():
                out = self._encode(batch, device)
        except Exception as exc:  # the user's model or transform: say which
            raise EncoderError(
                f"The encoder {self.name!r} failed on a batch of {len(batch)} samples "
                f"({_batch_text(batch)}): {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        return self._checked(out, len(batch))

    def embed(
        self, dataset: Any, positions: Any, *, split: str = "pool", device: Any = "cpu"
    ) -> np.ndarray:
        """Embeddings of the samples at ``positions`` (one batch; the cache splits the pool)."""
        return self.encode(self.inputs(dataset, positions, split), device)

    def _checked(self, out: Any, n: int) -> np.ndarray:
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        try:
            arr = np.asarray(out)
        except Exception:  # noqa: BLE001 - whatever it was, it is not an array of floats
            arr = np.asarray(None)
        what = f"The encoder {self.name!r}"
        if arr.ndim != 2 or arr.shape[0] != n or arr.dtype.kind not in "fiu":
            raise EncoderOutputError(
                f"{what} must return a float array (n, D) with one row per sample ({n} in this "
                f"batch). Got {short_repr(out)} (shape {getattr(arr, 'shape', None)}, dtype "
                f"{getattr(arr, 'dtype', None)}) instead."
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).any(axis=1).sum())
            raise EncoderOutputError(
                f"{what} must return finite embeddings. Got NaN or infinite values in {bad} of "
                f"{n} rows instead."
            )
        if arr.shape[1] == 0:
            raise EncoderOutputError(f"{what} must return at least one dimension. Got (n, 0).")
        if self._dim is None:
            self._dim = int(arr.shape[1])
        elif arr.shape[1] != self._dim:
            raise EncoderOutputError(
                f"{what} must return the same width D for every batch. Got D={arr.shape[1]} "
                f"after D={self._dim} instead."
            )
        return arr


class _CallableEncoder(Encoder):
    def __init__(self, fn: Callable[[Any], Any], version: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn = fn
        self.version = version

    def _digest(self) -> str:
        return code_digest(self.fn, self.version)

    def _encode(self, batch: Any, device: Any) -> Any:
        if hasattr(batch, "numpy"):
            batch = batch.numpy()
        return self.fn(batch)


def from_callable(
    fn: Callable[[Any], Any],
    *,
    name: str,
    kinds: Sequence[str] = _KINDS,
    image_size: int | None = None,
    rgb: bool = False,
    batch_size: int = 256,
    version: str = "",
) -> Encoder:
    """An encoder from any function ``fn(batch) -> (n, D)`` array (an API, CLIP, a script).

    ``fn`` gets numpy arrays for images ``(n, C, S, S)`` in [0, 1] and tabular rows ``(n, F)``,
    and a list of str for texts. Its id is ``name`` plus a hash of the function's code and
    ``version``: change ``version`` when the function gives other embeddings for the same code
    (e.g. it calls a remote model that was updated), so the cache is not reused.
    """
    where = "encoders.from_callable"
    if not callable(fn):
        raise param_error("fn", where, "a callable(batch) -> (n, D) array", fn, TypeError)
    if not isinstance(version, str):
        raise param_error("version", where, "a str", version, TypeError)
    return _CallableEncoder(
        fn,
        version,
        name=name,
        kinds=kinds,
        image_size=image_size,
        rgb=rgb,
        batch_size=batch_size,
        where=where,
    )


class _ModuleEncoder(Encoder):
    def __init__(self, module: Any, transform: Callable[[Any], Any] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.module = module.eval()
        self.transform = transform
        self._device: Any = None

    def _digest(self) -> str:
        # The transform changes the embeddings as much as the weights do.
        transform = "" if self.transform is None else code_digest(self.transform)
        return weights_digest(self.module) + transform

    def _encode(self, batch: Any, device: Any) -> Any:
        import torch

        x = self.transform(batch) if self.transform is not None else batch
        if self._device != device:
            self.module.to(device)
            self._device = device
        if isinstance(x, torch.Tensor):
            x = x.to(device)
        dev = torch.device(device)
        if dev.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return self.module(x)
        return self.module(x)


def from_module(
    module: Any,
    transform: Callable[[Any], Any] | None = None,
    *,
    name: str,
    kinds: Sequence[str] = ("image",),
    image_size: int | None = 224,
    rgb: bool = True,
    batch_size: int = 64,
) -> Encoder:
    """An encoder from a ``torch.nn.Module`` that maps a batch to embeddings ``(n, D)``.

    Parameters
    ----------
    module : torch.nn.Module
        Put in eval mode and run under ``torch.inference_mode`` (autocast on CUDA). Remove the
        classification layer first (e.g. ``model.fc = nn.Identity()``).
    transform : callable, optional
        Applied to each prepared batch before ``module`` (normalization, tokenization).
    name : str
    kinds, image_size, rgb, batch_size
        As in :class:`Encoder`. Images come resized to ``image_size`` (224 by default), RGB,
        in [0, 1]: normalize them in ``transform``.
    """
    where = "encoders.from_module"
    from torch import nn

    if not isinstance(module, nn.Module):
        raise param_error("module", where, "a torch.nn.Module", module, TypeError)
    if transform is not None and not callable(transform):
        raise param_error("transform", where, "None or a callable", transform, TypeError)
    return _ModuleEncoder(
        module,
        transform,
        name=name,
        kinds=kinds,
        image_size=image_size,
        rgb=rgb,
        batch_size=batch_size,
        where=where,
    )
