"""Loaders of local files: MNIST's IDX files and image folders. Nothing downloads."""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dal_widgets._checks import (
    DalWarning,
    DataNotFoundError,
    check_int,
    param_error,
)
from dal_widgets.data._dataset import Dataset
from dal_widgets.data._loaders import _split_dataset

__all__ = ["IMAGE_SUFFIXES", "LazyImages", "image_files", "image_folder", "mnist"]

_GRAY_MODES = {"L", "1", "LA", "I", "I;16", "F"}


def _unreadable() -> tuple[type[BaseException], ...]:
    from PIL import Image, UnidentifiedImageError

    # DecompressionBombError: over Pillow's pixel limit, unreadable like the rest.
    return (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _check_image(path: Path | str) -> str:
    """Open an image file's header and check its structure (no pixels are decoded): its mode.

    Raises what Pillow raises for an unreadable file (see ``_unreadable``)."""
    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
        im.verify()  # structure and checksums where the format has them, without decoding
    return mode


class LazyImages:
    """Image files that are decoded only when their pixels are needed.

    ``len()`` and ``shape`` cost nothing; :meth:`load` decodes every file (at ``size`` x
    ``size``, one channel when ``gray``) into a float32 array ``(N, C, size, size)`` in
    [0, 1], which a :class:`~dal_widgets.data.Dataset` does the first time its ``X`` is read
    (the from-scratch model needs it). An encoder never asks for it: it decodes its own
    batches at its own resolution from the files, so the pool's pixels are never all in memory.
    """

    def __init__(self, paths: list[str], size: int, gray: bool) -> None:
        self.paths = list(paths)
        self.size = int(size)
        self.gray = bool(gray)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 1 if self.gray else 3, self.size, self.size)

    def subset(self, rows: Any) -> LazyImages:
        return LazyImages([self.paths[i] for i in np.asarray(rows).tolist()], self.size, self.gray)

    def load(self) -> np.ndarray:
        """Decode every file (JPEG in draft mode): ``(N, C, size, size)`` float32 in [0, 1]."""
        from PIL import Image

        out = np.empty((len(self.paths), self.size, self.size, 3), dtype=np.uint8)
        for i, path in enumerate(self.paths):  # decoding is per file
            try:
                with Image.open(path) as im:
                    im.draft(None, (self.size, self.size))
                    img = im.convert("RGB").resize(
                        (self.size, self.size), Image.Resampling.BILINEAR
                    )
            except _unreadable() as exc:
                raise ValueError(
                    f"The image file {path!r} could not be decoded ({exc}); it was readable when "
                    "the dataset was loaded. Remove or replace it and load the folder again."
                ) from None
            out[i] = np.asarray(img, dtype=np.uint8)
        X = (out[..., :1] if self.gray else out).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(np.moveaxis(X, -1, 1))

    def __repr__(self) -> str:
        return (
            f"LazyImages({len(self.paths)} files, {self.size}px, {'gray' if self.gray else 'RGB'})"
        )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: expected {expected} bytes of data, found {len(data) - offset}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def mnist(
    root: str | os.PathLike[str],
    *,
    split: str = "test",
    holdout: float | int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> Dataset:
    """MNIST from local IDX files (``.gz`` or raw). Never downloads.

    Parameters
    ----------
    root : path
        Folder holding ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``
        (``split="test"``) or the ``train-`` files.
    split : {"test", "train"}
    holdout : float, int or None
        Fraction or count held out for evaluation, stratified by ``seed``.
    verify : bool
        If a ``SHA256SUMS`` file lies beside the data, check the files against it.
    """
    where = "datasets.mnist"
    if split not in _MNIST_FILES:
        raise param_error("split", where, "'test' or 'train'", split)
    root_path = Path(root)
    found = []
    looked = []
    for stem in _MNIST_FILES[split]:
        candidates = [root_path / (stem + ".gz"), root_path / stem]
        looked += [str(c) for c in candidates]
        hit = next((c for c in candidates if c.is_file()), None)
        found.append(hit)
    if None in found:
        raise DataNotFoundError(
            f"datasets.mnist found no MNIST {split} files in {str(root_path)!r}; it looked for: "
            + ", ".join(looked)
            + ". It never downloads: put the IDX files there."
        )
    images_path, labels_path = found
    assert images_path is not None and labels_path is not None
    if verify:
        _verify_sha256(root_path, [images_path, labels_path])
    images = _read_idx(images_path)
    labels = _read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files in {root_path} disagree: images {images.shape}, labels {labels.shape}."
        )
    h = hashlib.sha256(labels.tobytes())
    h.update(images[:: max(1, len(images) // 512)].tobytes())
    return _split_dataset(
        images[:, None].astype(np.float32) / np.float32(255.0),
        labels,
        None,
        holdout,
        seed,
        where,
        classes=[str(c) for c in range(10)],
        kind="image",
        name=f"mnist-{split}",
        content_key=h.digest(),
    )


def _verify_sha256(root: Path, files: list[Path]) -> None:
    sums = root / "SHA256SUMS"
    if not sums.is_file():
        return
    expected = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            expected[parts[1].lstrip("*")] = parts[0].lower()
    for path in files:
        want = expected.get(path.name)
        if want is None:
            continue
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            raise ValueError(
                f"{path} does not match SHA256SUMS (expected {want[:12]}..., got {got[:12]}...)."
            )


def image_folder(
    path: str | os.PathLike[str],
    *,
    size: int = 32,
    grayscale: bool | None = None,
    holdout: float | int | None = None,
    on_error: str = "warn",
    seed: int = 0,
) -> Dataset:
    """Images in the torchvision ImageFolder layout: ``path/<class name>/<image file>``.

    Class names are the sub-folder names, sorted. Ids are the file paths relative to ``path``
    (``"cat/001.png"``), so they survive reordering and re-scanning.

    Parameters
    ----------
    path : path
        The root folder.
    size : int
        Images are resized to ``size`` x ``size`` for the model (thumbnails use the originals).
    grayscale : bool, optional
        Load as one channel. By default: one channel when every image is grayscale.
    holdout : float, int or None
        A stratified held-out fraction or count.
    on_error : {"warn", "raise"}
        Unreadable image files (including those over Pillow's ``Image.MAX_IMAGE_PIXELS``
        limit against decompression bombs): ``"warn"`` skips them with one warning that lists
        them; ``"raise"`` fails on the first with its path.
    """
    where = "datasets.image_folder"
    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(
            f"The 'path' parameter of {where} must be an existing folder. Got {str(root)!r}."
        )
    if on_error not in ("warn", "raise"):
        raise param_error("on_error", where, "'warn' or 'raise'", on_error)
    size = check_int(size, "size", where, lo=4, hi=1024)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"{where} found no class folders in {str(root)!r}: expected {root}/<class name>/<image>."
        )
    files: list[tuple[Path, int]] = []
    for ci, d in enumerate(class_dirs):
        files += [
            (f, ci)
            for f in sorted(d.rglob("*"))
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not files:
        raise ValueError(
            f"{where} found no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}."
        )
    keep, gray = _readable(
        [f for f, _ in files], on_error, grayscale, where, lambda f: str(Path(f).relative_to(root))
    )
    full = [str(files[i][0]) for i in keep]
    return _image_dataset(
        full,
        np.asarray([files[i][1] for i in keep], dtype=np.int64),
        [d.name for d in class_dirs],
        np.asarray([files[i][0].relative_to(root).as_posix() for i in keep], dtype=object),
        size=size,
        gray=gray,
        holdout=holdout,
        seed=seed,
        where=where,
        name=root.name,
    )


def _readable(
    paths: list[Any], on_error: str, grayscale: bool | None, where: str, show: Any
) -> tuple[list[int], bool]:
    """Positions of the readable image files (headers checked, no pixel decoded; the others
    skipped with one warning, or ``on_error="raise"``), and whether to load them as gray."""
    keep, bad, modes = [], [], set()
    for i, f in enumerate(paths):  # one header per file
        try:
            modes.add(_check_image(f))
        except _unreadable() as exc:
            if on_error == "raise":
                raise ValueError(f"{where} could not read image {str(f)!r}: {exc}") from None
            bad.append(show(f))
            continue
        keep.append(i)
    if bad:
        warnings.warn(
            f"{where} skipped {len(bad)} unreadable image file(s): {', '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''}",
            DalWarning,
            stacklevel=3,
        )
    if not keep:
        raise ValueError(f"{where} could read none of the {len(paths)} image files.")
    return keep, grayscale if grayscale is not None else modes <= _GRAY_MODES


def _image_dataset(
    full: list[str],
    targets: np.ndarray | None,
    classes: Any,
    ids: Any,
    *,
    size: int,
    gray: bool,
    holdout: Any,
    seed: int,
    where: str,
    name: str,
) -> Dataset:
    """A lazy image dataset over readable files (pixels decoded when needed)."""
    h = hashlib.sha256()
    for i, fp in enumerate(full):
        h.update(f"{ids[i]}|{os.path.getsize(fp)}\x00".encode())
    return _split_dataset(
        LazyImages(full, size, gray),
        targets,
        ids,
        holdout,
        seed,
        where,
        classes=classes,
        kind="image",
        name=name,
        paths=full,
        content_key=h.digest() + f"|{size}|{gray}".encode(),
    )


def image_files(
    paths: Any,
    y: Any = None,
    classes: Any = None,
    *,
    ids: Any = None,
    size: int = 32,
    grayscale: bool | None = None,
    holdout: float | int | None = None,
    on_error: str = "warn",
    seed: int = 0,
    name: str = "images",
) -> Dataset:
    """Images from a list of files, with or without labels.

    Nothing is decoded when loading (headers are checked): the pixels are read from the files
    when needed, by an encoder in batches at its own resolution, or all at ``size`` x ``size``
    the first time the from-scratch model needs ``X``; thumbnails come from the files.

    Parameters
    ----------
    paths : sequence of str or path
    y : sequence, optional
        A label per file (class names or indices into ``classes``); None for an unlabeled pool.
    classes : sequence of str, optional
        The class list (needed without ``y``; by default the sorted labels in ``y``).
    ids : sequence, optional
        One id per file (default: the paths as given, as str).
    size, grayscale, holdout, on_error, seed
        As in :func:`image_folder`.
    name : str
    """
    where = "datasets.image_files"
    if isinstance(paths, (str, bytes, os.PathLike)) or not hasattr(paths, "__len__"):
        raise param_error("paths", where, "a list of image file paths", paths, TypeError)
    text = [os.fspath(p) if isinstance(p, (str, os.PathLike)) else p for p in paths]
    if not text:
        raise param_error("paths", where, "a non-empty list of image file paths", paths)
    for i, p in enumerate(text):
        if not isinstance(p, str):
            raise param_error(f"paths[{i}]", where, "a str or os.PathLike", p, TypeError)
    if on_error not in ("warn", "raise"):
        raise param_error("on_error", where, "'warn' or 'raise'", on_error)
    size = check_int(size, "size", where, lo=4, hi=1024)
    from dal_widgets.data._dataset import _as_ids
    from dal_widgets.data._loaders import _classes_and_targets

    all_ids = _as_ids(text if ids is None else ids, len(text), where)
    names, targets = _classes_and_targets(y, classes, len(text), where)
    missing = [p for p in text if not os.path.isfile(p)]
    if missing:
        raise DataNotFoundError(
            f"The 'paths' parameter of {where} must name existing files. {len(missing)} do not, "
            f"e.g. {missing[:3]}."
        )
    keep, gray = _readable(text, on_error, grayscale, where, str)
    return _image_dataset(
        [text[i] for i in keep],
        None if targets is None else targets[keep],
        names,
        all_ids[keep],
        size=size,
        gray=gray,
        holdout=holdout,
        seed=seed,
        where=where,
        name=name,
    )
