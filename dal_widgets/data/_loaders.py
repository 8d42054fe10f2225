"""Dataset loaders. None of them downloads anything: they read arrays or local files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dal_widgets._checks import (
    check_array,
    check_int,
    param_error,
    short_repr,
)
from dal_widgets.data._dataset import KINDS, Dataset, _as_ids

__all__ = ["digits", "from_arrays", "texts"]


# ---------------------------------------------------------------------------- shared helpers
def _holdout_split(
    y: np.ndarray | None, holdout: Any, seed: int, where: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Positions (pool, held-out) for a fraction or a count, stratified by y; None for no split."""
    if holdout is None:
        return None
    n = len(y) if y is not None else 0
    if isinstance(holdout, float):
        if not 0.0 < holdout < 1.0:
            raise param_error(
                "holdout", where, "None, a fraction in (0, 1), a count or (X_eval, y_eval)", holdout
            )
        n_eval = max(1, round(holdout * n))
    else:
        n_eval = check_int(holdout, "holdout", where, lo=1, hi=max(1, n - 1))
    if y is None:
        raise ValueError(
            f"The 'holdout' parameter of {where} splits off labeled samples, so 'y' must be "
            "given. Got y=None instead."
        )
    if n_eval >= n:
        raise param_error("holdout", where, f"smaller than the number of samples ({n})", holdout)
    rng = np.random.default_rng(seed)
    # Stratified: take from each class in proportion, the rounding remainder at random.
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts * n_eval / n).astype(int)
    remainder = n_eval - quota.sum()
    if remainder > 0:
        frac = counts * n_eval / n - quota
        p = frac / frac.sum() if frac.sum() > 0 else None
        extra = rng.choice(len(classes), size=remainder, replace=False, p=p)
        quota[extra] += 1
    eval_pos = []
    for cls, q in zip(classes, quota):  # loops over classes, not samples
        members = np.flatnonzero(y == cls)
        eval_pos.append(rng.choice(members, size=min(q, len(members)), replace=False))
    held = np.sort(np.concatenate(eval_pos)) if eval_pos else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def _classes_and_targets(
    y: Any, classes: Any, n: int, where: str
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Resolve the class list once and turn y into class indices.

    ``y`` may hold class names or values; with ``classes`` given, y's values must be among them
    (or be integer indices into them). Without ``classes``, they are the sorted unique values
    of ``y``, as strings.
    """
    if classes is not None:
        names = [str(c) for c in classes]
        if len(names) == 0:
            raise param_error("classes", where, "a non-empty list of class names", classes)
        if len(set(names)) != len(names):
            dup = sorted({c for c in names if names.count(c) > 1})
            raise ValueError(
                f"The 'classes' parameter of {where} must hold unique names. Got duplicates: {dup}."
            )
    if y is None:
        if classes is None:
            raise ValueError(
                f"{where} needs the class list: pass 'classes' (a list of class names) when 'y' "
                "is None. The class list is fixed up front, never inferred from labels seen later."
            )
        return tuple(names), None
    y_arr = np.asarray(y)
    if y_arr.ndim != 1 or len(y_arr) != n:
        raise ValueError(
            f"The 'y' parameter of {where} must be 1-D with one label per sample ({n}). "
            f"Got {short_repr(y_arr)} instead."
        )
    if y_arr.dtype.kind == "f":
        if not np.isfinite(y_arr).all():
            raise ValueError(
                f"The 'y' parameter of {where} must hold finite labels. Got NaN or infinity."
            )
        if not np.all(y_arr == np.round(y_arr)):
            raise param_error(
                "y", where, "class labels (ints or strs), not continuous values", y_arr, TypeError
            )
        y_arr = y_arr.astype(np.int64)
    if classes is None:
        values = np.unique(y_arr.astype(str) if y_arr.dtype == object else y_arr)
        names = [str(v) for v in values]
        lookup = {str(v): i for i, v in enumerate(values.tolist())}
    else:
        lookup = {c: i for i, c in enumerate(names)}
    y_str = y_arr.astype(str)
    targets = (
        np.fromiter((lookup.get(v, -1) for v in y_str), dtype=np.int64, count=n)
        if n
        else np.zeros(0, np.int64)
    )
    unknown = targets < 0
    if unknown.any() and classes is not None and y_arr.dtype.kind in "iu":
        # Integer y with explicit names: the ints are indices into the class list.
        idx = y_arr.astype(np.int64)
        ok = (idx >= 0) & (idx < len(names))
        if ok.all():
            return tuple(names), idx
    if unknown.any():
        bad = sorted(set(y_str[unknown].tolist()))[:5]
        raise ValueError(
            f"The 'y' parameter of {where} holds labels outside 'classes': {bad}. "
            f"Expected names from {names[:10]}{'...' if len(names) > 10 else ''} "
            "or integer indices into them."
        )
    return tuple(names), targets


def _is_multi_label(y: Any) -> bool:
    """y given as one collection of classes per sample, or as a 2-D 0/1 matrix."""
    if y is None or isinstance(y, (str, bytes)):
        return False
    if isinstance(y, np.ndarray):
        return y.ndim == 2
    try:
        first = next(iter(y))
    except (TypeError, StopIteration):
        return False
    return isinstance(first, (list, tuple, set, frozenset, np.ndarray))


def _multi_label_targets(
    y: Any, classes: Any, n: int, where: str
) -> tuple[tuple[str, ...], np.ndarray]:
    """Class list and (N, C) uint8 multi-hot targets from collections of classes or a 0/1 matrix."""
    if isinstance(y, np.ndarray) and y.ndim == 2:
        if y.shape[0] != n:
            raise ValueError(
                f"The 'y' parameter of {where} must have one row per sample ({n}). Got {y.shape[0]}."
            )
        if not np.isin(y, (0, 1)).all():
            raise param_error("y", where, "a 0/1 matrix (multi-hot) for multi-label data", y)
        names = (
            [str(c) for c in classes]
            if classes is not None
            else [str(i) for i in range(y.shape[1])]
        )
        if len(names) != y.shape[1]:
            raise ValueError(
                f"The 'classes' parameter of {where} must name the {y.shape[1]} columns of y. Got {len(names)}."
            )
        return tuple(names), y.astype(np.uint8)
    rows = [list(r) for r in y]
    if len(rows) != n:
        raise ValueError(
            f"The 'y' parameter of {where} must have one entry per sample ({n}). Got {len(rows)}."
        )
    if classes is None:
        names = sorted({str(v) for r in rows for v in r})
        if not names:
            raise ValueError(
                f"{where} needs the class list: pass 'classes' when no sample has a label."
            )
    else:
        names = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(names)}
    out = np.zeros((n, len(names)), dtype=np.uint8)
    for i, r in enumerate(rows):  # validation of user input, once
        for v in r:
            j = index.get(str(v))
            if (
                j is None
                and isinstance(v, (int, np.integer))
                and classes is not None
                and 0 <= int(v) < len(names)
            ):
                j = int(v)
            if j is None:
                raise ValueError(
                    f"The 'y' parameter of {where} holds a label outside 'classes' in row {i}: {short_repr(v)}. "
                    f"Expected names from {names[:10]}{'...' if len(names) > 10 else ''}."
                )
            out[i, j] = 1
    return tuple(names), out


def _image_array(X: np.ndarray, where: str) -> np.ndarray:
    """Images to float32 (N, C, H, W) in [0, 1] for uint8 input; floats are kept as given."""
    if X.ndim == 3:
        X = X[:, None]
    elif X.ndim == 4 and X.shape[-1] in (1, 3, 4) and X.shape[1] not in (1, 3, 4):
        X = np.moveaxis(X, -1, 1)  # channels-last to channels-first
    elif X.ndim != 4:
        raise ValueError(
            f"The 'X' parameter of {where} with kind='image' must be (N, H, W), (N, C, H, W) "
            f"or (N, H, W, C). Got shape {X.shape} instead."
        )
    if X.dtype == np.uint8:
        return np.ascontiguousarray(X, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(X, dtype=np.float32)


def _split_dataset(
    X: Any,
    targets: np.ndarray | None,
    ids: np.ndarray | None,
    holdout: Any,
    seed: int,
    where: str,
    **kwargs: Any,
) -> Dataset:
    proxy = targets.argmax(1) if targets is not None and targets.ndim == 2 else targets
    split = _holdout_split(proxy, holdout, seed, where)
    if split is None:
        return Dataset(X, ids=ids, targets=targets, **kwargs)
    pool, held = split
    all_ids = _as_ids(ids, len(X), where)
    assert targets is not None
    texts = kwargs.pop("texts", None)
    paths = kwargs.pop("paths", None)
    take = X.subset if hasattr(X, "subset") else X.__getitem__  # LazyImages stay lazy
    return Dataset(
        take(pool),
        ids=all_ids[pool],
        targets=targets[pool],
        X_eval=take(held),
        y_eval=targets[held],
        eval_ids=all_ids[held],
        texts=None if texts is None else [texts[i] for i in pool],
        paths=None if paths is None else [paths[i] for i in pool],
        eval_texts=None if texts is None else [texts[i] for i in held],
        eval_paths=None if paths is None else [paths[i] for i in held],
        **kwargs,
    )


# ---------------------------------------------------------------------------- loaders
def digits(*, holdout: float | int = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): the embedded default.

    Nothing is downloaded: the data ships inside scikit-learn. Ids are the row numbers in
    ``sklearn.datasets.load_digits()``. With the defaults, a fixed stratified 20% (360
    images) is held out for evaluation and 1,437 form the pool.

    Parameters
    ----------
    holdout : float or int
        Fraction or count held out, stratified.
    seed : int
        Seed of the held-out split (fixed by default, so results are comparable).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = bunch.target.astype(np.int64)
    return _split_dataset(
        X,
        y,
        None,
        holdout,
        seed,
        "datasets.digits",
        classes=[str(c) for c in range(10)],
        kind="image",
        name="digits",
        content_key=b"sklearn-digits-v1",
    )


def from_arrays(
    X: Any,
    y: Any = None,
    classes: Sequence[Any] | None = None,
    kind: str | None = None,
    *,
    holdout: Any = None,
    ids: Any = None,
    columns: Sequence[str] | None = None,
    seed: int = 0,
    name: str = "arrays",
    multi_label: bool | None = None,
) -> Dataset:
    """A dataset from in-memory arrays.

    Parameters
    ----------
    X : array-like
        ``(N, F)`` for tabular data; ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` for
        images (uint8 is scaled to [0, 1]); a list of str for texts (see :func:`texts`).
    y : array-like, optional
        Known labels (class names, or indices into ``classes``). Used by simulated oracles
        and to split off ``holdout``.
    classes : list, optional
        The class names. Required when ``y`` is None; otherwise the sorted unique values of y.
    kind : {"image", "tabular", "text"}, optional
        Inferred when None: a list of str is text, 2-D is tabular, 3-D or 4-D is image.
    holdout : None, float, int or (X_eval, y_eval)
        A held-out split for ``Session.evaluate``: a stratified fraction or count split off
        the given data, or separate arrays.
    ids : sequence of int or str, optional
        Stable sample ids (default ``0..N-1``).
    columns : list of str, optional
        Column names for tabular rows.
    multi_label : bool, optional
        Several classes per sample. Detected when ``y`` holds one collection of classes per
        sample (``[["cat"], ["cat", "dog"], []]``) or is a 2-D 0/1 matrix; then ``targets`` is
        an (N, C) multi-hot matrix and sessions label sets of classes.
    """
    where = "datasets.from_arrays"
    if kind is not None and kind not in KINDS:
        raise param_error("kind", where, f"one of {KINDS} or None", kind)
    if kind == "text" or (
        kind is None and isinstance(X, (list, tuple)) and X and isinstance(X[0], (str, bytes))
    ):
        return texts(X, y=y, classes=classes, ids=ids, holdout=holdout, seed=seed, name=name)
    arr = check_array(X, "X", where, ndim=(2, 3, 4), min_rows=1)
    if arr.dtype.kind not in "fiub":
        raise param_error("X", where, "a numeric array", arr, TypeError)
    if 0 in arr.shape[1:]:  # nothing for a model to read
        raise param_error("X", where, "an array with at least one feature per sample", arr)
    if kind is None:
        kind = "tabular" if arr.ndim == 2 else "image"
    if kind == "tabular":
        if arr.ndim != 2:
            raise ValueError(
                f"The 'X' parameter of {where} with kind='tabular' must be 2-D (N, F). Got shape {arr.shape}."
            )
        with np.errstate(over="ignore"):  # overflow is reported below, as a clear error
            data = np.ascontiguousarray(arr, dtype=np.float32)
        if columns is not None and len(columns) != data.shape[1]:
            raise ValueError(
                f"The 'columns' parameter of {where} must name {data.shape[1]} columns. Got {len(columns)}."
            )
    else:
        with np.errstate(over="ignore"):
            data = _image_array(arr, where)
    if not np.isfinite(data).all():
        raise ValueError(
            f"The 'X' parameter of {where} must hold finite numbers after conversion to float32 "
            f"(|x| < 3.4e38). Got values that overflow (largest |x| {float(np.abs(arr).max()):.3g})."
        )
    multi = _is_multi_label(y) if multi_label is None else bool(multi_label)
    if multi:
        if y is None:
            if classes is None:
                raise ValueError(f"{where} needs the class list: pass 'classes' when 'y' is None.")
            classes_t, targets = tuple(str(c) for c in classes), None
        else:
            classes_t, targets = _multi_label_targets(y, classes, len(data), where)
    else:
        classes_t, targets = _classes_and_targets(y, classes, len(data), where)
    common: dict[str, Any] = dict(
        classes=classes_t, kind=kind, name=name, columns=columns, multi_label=multi
    )
    if isinstance(holdout, tuple):
        if len(holdout) != 2:
            raise param_error("holdout", where, "a pair (X_eval, y_eval)", holdout)
        X_eval = check_array(holdout[0], "holdout[0] (X_eval)", where, min_rows=1)
        X_eval = (
            np.ascontiguousarray(X_eval, dtype=np.float32)
            if kind == "tabular"
            else _image_array(X_eval, where)
        )
        if X_eval.shape[1:] != data.shape[1:]:
            raise ValueError(
                f"The 'holdout' parameter of {where} must have samples shaped like X {data.shape[1:]}. "
                f"Got {X_eval.shape[1:]} instead."
            )
        y_eval: np.ndarray | None
        if multi:
            _, y_eval = _multi_label_targets(holdout[1], classes_t, len(X_eval), where)
        else:
            _, y_eval = _classes_and_targets(holdout[1], classes_t, len(X_eval), where)
        return Dataset(data, ids=ids, targets=targets, X_eval=X_eval, y_eval=y_eval, **common)
    return _split_dataset(data, targets, ids, holdout, seed, where, **common)


def _default_text_features(docs: list[str], n_components: int, seed: int) -> np.ndarray:
    """TF-IDF (word 1-2 grams) reduced by truncated SVD: dense, small, no download."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=1, max_features=50_000, sublinear_tf=True)
    try:
        sparse = tfidf.fit_transform(docs)
    except ValueError:  # every document is empty or stop words only
        return np.zeros((len(docs), 1), dtype=np.float32)
    k = min(n_components, sparse.shape[1] - 1, len(docs) - 1)
    if k < min(2, n_components):  # too few words or documents for an SVD: keep the TF-IDF
        return np.asarray(sparse.todense(), dtype=np.float32)
    dense = TruncatedSVD(n_components=k, random_state=seed).fit_transform(sparse)
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return (dense / np.maximum(norms, 1e-12)).astype(np.float32)


def texts(
    texts: Sequence[str],
    y: Any = None,
    classes: Sequence[Any] | None = None,
    *,
    ids: Any = None,
    holdout: Any = None,
    featurizer: Callable[[list[str]], Any] | None = None,
    n_components: int = 256,
    seed: int = 0,
    name: str = "texts",
) -> Dataset:
    """A dataset of texts.

    Parameters
    ----------
    texts : sequence of str
        The documents. ``bytes`` are decoded as UTF-8 (an error names the first that is not).
    y, classes, ids, holdout
        As in :func:`from_arrays`.
    featurizer : callable, optional
        ``featurizer(list_of_str) -> (N, F)`` array. The default (no download) is TF-IDF on word
        uni- and bigrams reduced to ``n_components`` dimensions by truncated SVD, L2-normalized.
    n_components : int
        At least 1; fewer dimensions come out when there are fewer distinct words or documents.
    """
    where = "datasets.texts"
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise param_error("texts", where, "a list of str", texts, TypeError)
    docs: list[str] = []
    for i, t in enumerate(texts):  # validation of user input, once
        if isinstance(t, bytes):
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"The 'texts' parameter of {where} must hold UTF-8 text. texts[{i}] is not "
                    f"valid UTF-8 ({exc.reason} at byte {exc.start}); decode it yourself first."
                ) from None
        if not isinstance(t, str):
            raise param_error(f"texts[{i}]", where, "a str", t, TypeError)
        docs.append(t)
    if not docs:
        raise param_error("texts", where, "a non-empty list of str", texts)
    if isinstance(holdout, tuple):
        raise param_error("holdout", where, "None, a fraction or a count (for texts)", holdout)
    n_components = check_int(n_components, "n_components", where, lo=1)
    if featurizer is None:
        X = _default_text_features(docs, n_components, seed)
    else:
        X = check_array(featurizer(docs), "featurizer(texts)", where, ndim=2, dtype=np.float32)
        if len(X) != len(docs):
            raise ValueError(
                f"The featurizer given to {where} returned {len(X)} rows for {len(docs)} texts."
            )
    classes_t, targets = _classes_and_targets(y, classes, len(docs), where)
    return _split_dataset(
        np.ascontiguousarray(X, dtype=np.float32),
        targets,
        ids,
        holdout,
        seed,
        where,
        classes=classes_t,
        kind="text",
        name=name,
        texts=docs,
    )
