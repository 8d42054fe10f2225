"""Loaders of local files: MNIST's IDX files and image folders. Nothing downloads."""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from dal_widgets._checks import (
    DalWarning,
    DataNotFoundError,
    check_int,
    param_error,
)
from dal_widgets.data._dataset import Dataset
from dal_widgets.data._loaders import _split_dataset

__all__ = ["IMAGE_SUFFIXES", "image_folder", "mnist"]

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
    from PIL import Image, UnidentifiedImageError

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
    images, labels, rel, full, bad = [], [], [], [], []
    modes = set()
    for f, ci in files:  # one file at a time is unavoidable: decoding is per file
        try:
            with Image.open(f) as im:
                modes.add(im.mode)
                # JPEG decodes at 1/2, 1/4 or 1/8 scale in draft mode (still >= size): a
                # 144-megapixel photo then costs a few MiB instead of ~700 while loading.
                im.draft(None, (size, size))
                im.load()
                images.append(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except (
            OSError,
            UnidentifiedImageError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,  # over Pillow's pixel limit: unreadable like the rest
        ) as exc:
            if on_error == "raise":
                raise ValueError(f"{where} could not read image {str(f)!r}: {exc}") from None
            bad.append(str(f.relative_to(root)))
            continue
        labels.append(ci)
        rel.append(f.relative_to(root).as_posix())
        full.append(str(f))
    if bad:
        warnings.warn(
            f"{where} skipped {len(bad)} unreadable image file(s): {', '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''}",
            DalWarning,
            stacklevel=2,
        )
    if not images:
        raise ValueError(
            f"{where} could read none of the {len(files)} image files under {str(root)!r}."
        )
    gray = grayscale if grayscale is not None else modes <= {"L", "1", "LA", "I", "I;16", "F"}
    stack = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # (N, H, W, 3)
    X = (stack[..., :1] if gray else stack).astype(np.float32) / np.float32(255.0)
    X = np.ascontiguousarray(np.moveaxis(X, -1, 1))
    h = hashlib.sha256()
    for r, fp in zip(rel, full):
        h.update(f"{r}|{os.path.getsize(fp)}\x00".encode())
    return _split_dataset(
        X,
        np.asarray(labels, dtype=np.int64),
        np.asarray(rel, dtype=object),
        holdout,
        seed,
        where,
        classes=[d.name for d in class_dirs],
        kind="image",
        name=root.name,
        paths=full,
        content_key=h.digest() + f"|{size}|{gray}".encode(),
    )
