"""Embeddings made elsewhere (CLIP, DINOv2, an API), given as arrays or ``.npy`` files."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from dal_widgets._checks import DataNotFoundError, param_error, short_repr
from dal_widgets.encoders._base import Encoder, EncoderOutputError

__all__ = ["precomputed"]


def _load(value: Any, name: str, where: str) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise DataNotFoundError(
                f"The {name!r} parameter of {where} names the file {path!r}, which does not exist."
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"The {name!r} file {path!r} of {where} is not a .npy array file of numbers "
                f"({exc}). Nothing in it was unpickled."
            ) from None
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):
            raise param_error(
                name, where, "an (N, D) float array or a .npy path", value, TypeError
            ) from None
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.dtype.kind not in "fiu":
        raise EncoderOutputError(
            f"The {name!r} parameter of {where} must be a float array (N, D) with D >= 1. "
            f"Got {short_repr(value)} (shape {arr.shape}, dtype {arr.dtype}) instead."
        )
    return arr


class _Precomputed(Encoder):
    def __init__(self, pool: np.ndarray, held: np.ndarray | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrays = {"pool": pool, "eval": held}
        self._dim = int(pool.shape[1])

    def _digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for key in ("pool", "eval"):
            arr = self.arrays[key]
            if arr is None:
                continue
            h.update(f"{key}|{arr.shape}|{arr.dtype}|".encode())
            for start in range(0, len(arr), 65536):  # a memory-mapped file, read in pieces
                h.update(np.ascontiguousarray(arr[start : start + 65536]).tobytes())
        return h.hexdigest()

    def check_dataset(self, dataset: Any, where: str) -> None:
        n_eval = dataset.n_eval
        for key, n in (("pool", len(dataset)), ("eval", n_eval)):
            arr = self.arrays[key]
            have = 0 if arr is None else len(arr)
            if n and have != n:
                what = "the pool" if key == "pool" else "the held-out split"
                param = "embeddings" if key == "pool" else "eval_embeddings"
                raise ValueError(
                    f"The {param!r} of encoder {self.name!r} (given to {where}) must have one row "
                    f"per sample of {what} of dataset {dataset.name!r} ({n}, in dataset order). "
                    f"Got {have} rows instead."
                )

    def full(self, split: str) -> np.ndarray | None:
        """All rows of ``split`` as float32 (a float32 file stays memory-mapped), checked."""
        arr = self.arrays[split]
        if arr is None:
            return None
        out = np.asarray(arr, dtype=np.float32)
        for start in range(0, len(out), 65536):
            self._checked(out[start : start + 65536], len(out[start : start + 65536]))
        return out

    def inputs(self, dataset: Any, positions: Any, split: str = "pool") -> Any:
        arr = self.arrays[split]
        assert arr is not None
        return np.asarray(arr[np.asarray(positions, dtype=np.int64)])

    def _encode(self, batch: Any, device: Any) -> Any:
        return batch


def precomputed(
    embeddings: Any, *, eval_embeddings: Any = None, name: str = "precomputed"
) -> Encoder:
    """Embeddings made elsewhere, as an encoder.

    Parameters
    ----------
    embeddings : array (N, D) or path to a ``.npy`` file
        One row per pool sample, in the order of ``dataset.ids``. A ``.npy`` file is
        memory-mapped (``allow_pickle=False``).
    eval_embeddings : array (M, D) or path, optional
        The held-out split's rows, in its order; needed when the dataset has a held-out split.
    name : str
    """
    where = "encoders.precomputed"
    pool = _load(embeddings, "embeddings", where)
    held = None if eval_embeddings is None else _load(eval_embeddings, "eval_embeddings", where)
    if held is not None and held.shape[1] != pool.shape[1]:
        raise ValueError(
            f"The 'eval_embeddings' parameter of {where} must have the width of 'embeddings' "
            f"({pool.shape[1]}). Got {held.shape[1]} instead."
        )
    return _Precomputed(
        pool, held, name=name, kinds=("image", "text", "tabular"), batch_size=65536, where=where
    )
