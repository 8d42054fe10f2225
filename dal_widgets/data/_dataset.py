"""The Dataset: model inputs, stable sample ids, a fixed class list and a held-out split."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dal_widgets._checks import param_error, short_repr

__all__ = ["KINDS", "Dataset"]

KINDS = ("image", "tabular", "text")

_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
#: Rendered image thumbnails kept per dataset (a 128-pixel PNG is a few tens of KB).
_THUMBNAIL_CACHE = 256


def _as_ids(ids: Any, n: int, where: str) -> np.ndarray:
    """Validate sample ids: one per sample, unique, all int or all str."""
    if ids is None:
        return np.arange(n, dtype=np.int64)
    values = list(ids) if not isinstance(ids, np.ndarray) else ids.tolist()
    if len(values) != n:
        raise ValueError(
            f"The 'ids' parameter of {where} must have one id per sample ({n}). "
            f"Got {len(values)} instead."
        )
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        try:
            arr = np.asarray(values, dtype=np.int64)
        except OverflowError:
            big = [v for v in values if not _INT64_MIN <= int(v) <= _INT64_MAX][:3]
            raise param_error(
                "ids", where, "ints in the int64 range [-2**63, 2**63 - 1]", big, ValueError
            ) from None
    elif all(isinstance(v, str) for v in values):
        arr = np.asarray(values, dtype=object)
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise TypeError(
            f"The 'ids' parameter of {where} must hold all ints or all strs. "
            f"Got a mix of {', '.join(kinds)} instead."
        )
    if n and np.unique(arr.astype(str) if arr.dtype == object else arr).size != n:
        uniq, counts = np.unique(
            arr.astype(str) if arr.dtype == object else arr, return_counts=True
        )
        dup = uniq[counts > 1][:5].tolist()
        raise ValueError(
            f"The 'ids' parameter of {where} must hold unique ids. Got duplicates: {dup}."
        )
    return arr


def _query_array(values: list[Any]) -> np.ndarray:
    """Ids to look up as an array, without numpy's guesses for huge ints.

    ``np.asarray([2**63, -1])`` is float64 and ``np.asarray([2**70])`` fails or is object:
    ints that do not share an integer dtype are kept as Python ints (an object array).
    """
    try:
        arr = np.asarray(values)
    except (OverflowError, TypeError, ValueError):
        arr = None
    if arr is None or arr.dtype.kind == "f":
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            return np.fromiter((int(v) for v in values), dtype=object, count=len(values))
        if arr is None:  # e.g. ragged nested lists: reported as ids of the wrong type
            return np.fromiter(values, dtype=object, count=len(values))
    return arr


class Dataset:
    """A pool of samples to label, with stable ids and a fixed class list.

    Build one with the loaders in :mod:`dal_widgets.datasets` (``digits()``, ``mnist()``,
    ``from_arrays()``, ``image_folder()``, ``texts()``) rather than directly.

    Attributes
    ----------
    X : numpy.ndarray
        Model inputs, float32: ``(N, C, H, W)`` in [0, 1] for images, ``(N, F)`` otherwise.
        Image files (:func:`~dal_widgets.datasets.image_folder`, ``image_files``) are decoded
        into it the first time it is read; an encoder never reads it (see :attr:`lazy`).
    ids : numpy.ndarray
        One stable id per sample (int64, or object array of str). Ids, not positions, are what
        the store, the session and the widgets exchange, so they survive reordering.
    classes : tuple of str
        The class names, fixed up front.
    kind : {"image", "tabular", "text"}
    targets : numpy.ndarray or None
        Known class indices for the pool (for simulated oracles), or None; for multi-label
        data an (N, C) 0/1 matrix.
    multi_label : bool
        Several classes per sample.
    X_eval, y_eval : numpy.ndarray or None
        The held-out split used by ``Session.evaluate``.
    name : str
    """

    def __init__(
        self,
        X: Any,
        *,
        classes: Sequence[str],
        kind: str,
        ids: Any = None,
        targets: np.ndarray | None = None,
        X_eval: Any = None,
        y_eval: np.ndarray | None = None,
        eval_ids: Any = None,
        name: str = "dataset",
        content_key: bytes | None = None,
        texts: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        eval_texts: Sequence[str] | None = None,
        eval_paths: Sequence[str] | None = None,
        multi_label: bool = False,
    ) -> None:
        where = "Dataset"
        if kind not in KINDS:
            raise param_error("kind", where, f"one of {KINDS}", kind)
        self._X = X
        self.ids = _as_ids(ids, len(X), where)
        self.classes = tuple(classes)
        self.kind = kind
        self.targets = targets
        self._X_eval = X_eval
        self.y_eval = y_eval
        self.eval_ids = eval_ids
        self.name = name
        self.texts = None if texts is None else list(texts)
        self.columns = None if columns is None else [str(c) for c in columns]
        self.paths = None if paths is None else list(paths)
        #: The held-out split's texts and files (for encoders), in ``X_eval`` order.
        self.eval_texts = None if eval_texts is None else list(eval_texts)
        self.eval_paths = None if eval_paths is None else list(eval_paths)
        self.multi_label = bool(multi_label)
        self._content_key = content_key
        self._sorter: np.ndarray | None = None
        self._sorted_ids: np.ndarray | None = None
        self._fingerprint: str | None = None
        self._thumbs: OrderedDict[tuple[int, int | None], bytes] = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self._pixels_lock = threading.Lock()  # one decode of a lazy pool, whichever thread asks

    # ------------------------------------------------------------------ basic protocol
    def __getstate__(self) -> dict[str, Any]:
        # The thumbnail cache and its lock stay behind (a lock cannot be pickled or copied).
        state = self.__dict__.copy()
        del state["_thumbs"], state["_thumbs_lock"], state["_pixels_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thumbs = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self._pixels_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    # Image files stay on disk until the pixels are read (LazyImages from data._files).
    @property
    def X(self) -> np.ndarray:
        if hasattr(self._X, "load"):
            with self._pixels_lock:
                if hasattr(self._X, "load"):
                    self._X = self._X.load()
        return self._X

    @X.setter
    def X(self, value: np.ndarray) -> None:
        self._X = value

    @property
    def X_eval(self) -> np.ndarray | None:
        if self._X_eval is not None and hasattr(self._X_eval, "load"):
            with self._pixels_lock:
                if hasattr(self._X_eval, "load"):
                    self._X_eval = self._X_eval.load()
        return self._X_eval

    @X_eval.setter
    def X_eval(self, value: np.ndarray | None) -> None:
        self._X_eval = value

    @property
    def lazy(self) -> bool:
        """Whether the pool's pixels are still on disk only (``X`` not read yet)."""
        return hasattr(self._X, "load")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample's model input, without reading any pixels."""
        return tuple(int(d) for d in self._X.shape[1:])

    @property
    def n_eval(self) -> int:
        """Samples in the held-out split (0 without one)."""
        return 0 if self._X_eval is None else len(self._X_eval)

    def __repr__(self) -> str:
        held = self.n_eval
        return (
            f"Dataset({self.name!r}, kind={self.kind!r}, n={len(self)}, "
            f"classes={len(self.classes)}, held_out={held}, "
            f"targets={'known' if self.targets is not None else 'unknown'})"
        )

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def has_holdout(self) -> bool:
        """Whether a held-out split with labels exists."""
        return self._X_eval is not None and self.y_eval is not None and self.n_eval > 0

    @property
    def features(self) -> np.ndarray:
        """The inputs flattened to ``(N, F)`` (for maps and cold-start strategies)."""
        return self.X.reshape(len(self), -1)

    # ------------------------------------------------------------------ ids
    def positions(
        self, ids: Any, *, where: str = "Dataset.positions", name: str = "ids"
    ) -> np.ndarray:
        """Positions of the given sample ids, vectorized.

        Raises
        ------
        KeyError
            If any id is not in the dataset (the first few are named).
        """
        query = ids if isinstance(ids, np.ndarray) else _query_array(list(ids))
        if query.ndim != 1:
            query = query.reshape(-1)
        if query.size == 0:
            return np.zeros(0, dtype=np.int64)
        if self._sorter is None:
            keys, _ = self._key_array(self.ids)
            self._sorter = np.argsort(keys, kind="stable")
            self._sorted_ids = keys[self._sorter]
        assert self._sorted_ids is not None
        try:
            keys, valid = self._key_array(query)
        except (TypeError, ValueError):
            raise KeyError(
                f"The {name!r} parameter of {where} must hold sample ids, which are "
                f"{self._id_type()}. Got {short_repr(query)}."
            ) from None
        idx = np.searchsorted(self._sorted_ids, keys)
        idx = np.clip(idx, 0, len(self._sorted_ids) - 1)
        found = valid & (self._sorted_ids[idx] == keys)
        if not found.all():
            missing = query[~found][:5].tolist()
            raise KeyError(
                f"The {name!r} parameter of {where} holds unknown sample id(s) {missing}"
                f"{' and more' if (~found).sum() > 5 else ''}. Ids are {self._id_type()} "
                f"taken from dataset.ids (e.g. {self.ids[:3].tolist()})."
            )
        return self._sorter[idx].astype(np.int64)

    def _id_type(self) -> str:
        return "strs" if self.ids.dtype == object else "ints"

    def _key_array(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Comparable keys for ids, and a mask of the ids that can be in the dataset at all.

        Int ids outside int64 (``2**70``, a uint64 ``2**64 - 1``) get the mask False rather
        than an OverflowError, or a silent wrap-around onto a negative id.
        """
        everywhere = np.ones(values.shape, dtype=bool)
        if self.ids.dtype == object:
            if values.dtype.kind not in "OU" or not all(
                isinstance(v, str) for v in values.tolist()
            ):
                raise TypeError("string ids expected")
            return values.astype(str), everywhere
        if values.dtype.kind == "i":
            return values.astype(np.int64), everywhere
        if values.dtype.kind == "u":
            valid = values <= np.uint64(_INT64_MAX)
            return np.where(valid, values, 0).astype(np.int64), valid
        if values.dtype == object and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values.tolist()
        ):
            # As Python ints they compare exactly at any size; only those in range convert.
            ints = np.fromiter((int(v) for v in values.tolist()), dtype=object, count=values.size)
            valid = ((ints >= _INT64_MIN) & (ints <= _INT64_MAX)).astype(bool)
            keys = np.zeros(values.shape, dtype=np.int64)
            keys[valid] = ints[valid].astype(np.int64)
            return keys, valid
        raise TypeError("int ids expected")

    def python_id(self, sample_id: Any) -> int | str:
        """An id as a plain Python int or str (numpy scalars are not JSON or SQLite friendly)."""
        return str(sample_id) if self.ids.dtype == object else int(sample_id)

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """A short hash of the ids and content, tying a label store to this dataset."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.kind}|{len(self)}|".encode())
            h.update(
                self._key_array(self.ids)[0].tobytes()
                if self.ids.dtype != object
                else "\x00".join(self.ids.tolist()).encode()
            )
            if self._content_key is not None:
                h.update(self._content_key)
            elif self.texts is not None:
                h.update("\x00".join(self.texts).encode("utf-8", "surrogatepass"))
            else:
                # A strided subsample of rows keeps this fast on million-sample pools.
                step = max(1, len(self) // 1024)
                h.update(np.ascontiguousarray(self.X[::step], dtype=np.float32).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # ------------------------------------------------------------------ rendering
    def render(self, sample_id: Any, *, size: int | None = None) -> Any:
        """What the widgets show for one sample.

        Returns PNG bytes for images (nearest-neighbour upscaling for tiny images so pixels stay
        crisp; the newest 256 thumbnails are kept, so a repeated call does not decode the file
        again), the raw text for texts (not escaped: escaping is the view's job) and a
        ``{column: value}`` dict for tabular rows.
        """
        pos = int(self.positions([sample_id], where="Dataset.render")[0])
        if self.kind != "image":
            return _RENDERERS[self.kind](self, pos, size)
        # Decoding an original file is the slow part (0.8 s for 144 megapixels) and views ask
        # for the same thumbnail again and again: keep the newest few (least recently used out).
        key = (pos, size)
        with self._thumbs_lock:
            png = self._thumbs.get(key)
            if png is not None:
                self._thumbs.move_to_end(key)
                return png
        png = _render_image(self, pos, size)
        with self._thumbs_lock:
            self._thumbs[key] = png
            while len(self._thumbs) > _THUMBNAIL_CACHE:
                self._thumbs.popitem(last=False)
        return png


def _thumbnail_size(width: int, height: int, size: int | None) -> tuple[tuple[int, int], float]:
    """The thumbnail's (width, height) and its scale: ``size`` on the long side, by default
    the original clamped to [64, 128] pixels."""
    side = max(width, height)
    target = size if size is not None else max(64, min(side, 128))
    scale = target / side
    return (max(1, round(width * scale)), max(1, round(height * scale))), scale


def _render_image(ds: Dataset, pos: int, size: int | None) -> bytes:
    from PIL import Image

    img = None
    if ds.paths is not None:
        try:
            with Image.open(ds.paths[pos]) as handle:
                new, scale = _thumbnail_size(*handle.size, size)
                # JPEG decodes at a reduced scale (still >= the thumbnail) in draft mode: a
                # huge photo costs little memory and time.
                handle.draft(None, new)
                img = handle.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            img = None  # the file moved or broke since loading: fall back to the array
    if img is None:
        # A lazy pool keeps no pixels: a file that broke since loading shows as grey.
        arr = np.full((1, 8, 8), 0.5, np.float32) if ds.lazy else np.asarray(ds.X[pos], np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:  # inputs outside [0, 1]: stretch for display only
            arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
        pixels = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if pixels.shape[0] == 1:
            img = Image.fromarray(pixels[0], mode="L")
        else:
            img = Image.fromarray(np.moveaxis(pixels[:3], 0, -1), mode="RGB")
        new, scale = _thumbnail_size(*img.size, size)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    img = img.resize(new, resample)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _render_text(ds: Dataset, pos: int, size: int | None) -> str:
    assert ds.texts is not None
    text = ds.texts[pos]
    return text if size is None or len(text) <= size else text[: size - 1] + "\u2026"


def _render_row(ds: Dataset, pos: int, size: int | None) -> dict[str, float]:
    row = np.asarray(ds.X[pos]).reshape(-1)
    names = ds.columns or [f"x{i}" for i in range(row.size)]
    return {name: float(v) for name, v in zip(names, row.tolist())}


_RENDERERS: dict[str, Callable[[Dataset, int, int | None], Any]] = {
    "image": _render_image,
    "text": _render_text,
    "tabular": _render_row,
}
