"""What users pass as ids and labels, turned into what the store keeps.

Ids: one id or a 1-D sequence of ids, checked against the dataset (KeyError for unknown ones),
as plain Python ints or strs. Labels: class names or class indices, one for all ids or one per
id; for multi-label data, sets of classes (names, indices, or a 0/1 row per id).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from dal_widgets._checks import param_error, short_repr

__all__ = ["class_name", "label_names", "labels_key", "sample_ids", "targets", "training_set"]

_ONE = (str, int, np.integer)


def _is_one(value: Any) -> bool:
    return isinstance(value, _ONE) and not isinstance(value, bool)


def sample_ids(dataset: Any, ids: Any, where: str, name: str = "ids") -> list[Any]:
    """One id or a 1-D sequence of ids of ``dataset``, as plain Python ids (errors name the
    parameter ``name``)."""
    if _is_one(ids):
        ids = [ids]
    expected = "a sample id or a 1-D sequence of sample ids"
    if (
        ids is None
        or isinstance(ids, (bool, float, dict))
        or (isinstance(ids, np.ndarray) and ids.ndim != 1)
    ):
        raise param_error(name, where, expected, ids, TypeError)
    try:
        ids_list = list(ids)
    except TypeError:
        raise param_error(name, where, expected, ids, TypeError) from None
    if not ids_list:
        raise param_error(name, where, "at least one sample id", ids)
    if any(isinstance(i, (list, tuple, set, np.ndarray)) for i in ids_list):
        raise param_error(name, where, expected, ids, TypeError)
    dataset.positions(ids_list, where=where, name=name)  # KeyError naming unknown ids
    return [dataset.python_id(i) for i in ids_list]


def class_name(classes: list[str], value: Any, where: str) -> str:
    """A class name from a name or an index into ``classes``."""
    if isinstance(value, str) and value in classes:
        return value
    if _is_one(value) and not isinstance(value, str) and 0 <= int(value) < len(classes):
        return classes[int(value)]
    raise ValueError(
        f"The 'labels' parameter of {where} must hold class names from {classes[:10]}"
        f"{'...' if len(classes) > 10 else ''} or integer indices in [0, {len(classes) - 1}]. "
        f"Got {short_repr(value)} instead."
    )


def _label_set(classes: list[str], value: Any, where: str) -> tuple[str, ...]:
    if _is_one(value):
        return (class_name(classes, value, where),)
    items = value.tolist() if isinstance(value, np.ndarray) else list(value)
    # A numpy 0/1 row as long as the class list is multi-hot; lists of ints are indices.
    if (
        isinstance(value, np.ndarray)
        and value.dtype.kind in "biuf"
        and value.size == len(classes)
        and np.isin(value, (0, 1)).all()
    ):
        return tuple(c for c, on in zip(classes, items) if on)
    return tuple(sorted({class_name(classes, x, where) for x in items}, key=classes.index))


def _label_sets(classes: list[str], labels: Any, n: int, where: str) -> list[tuple[str, ...]]:
    """Multi-label: one set of classes per id, from names, indices or 0/1 rows.

    A single name or index, or one collection of them when its length differs from the
    number of ids, applies to every id; a sequence of ``n`` collections gives one per id.
    """
    if _is_one(labels):
        return [_label_set(classes, labels, where)] * n
    try:
        values = list(labels)
    except TypeError:
        raise param_error(
            "labels", where, "sets of class names or indices", labels, TypeError
        ) from None
    if not values:  # an empty collection: "none of the classes" for every id
        return [()] * n
    nested = all(isinstance(v, (list, tuple, set, frozenset, np.ndarray)) for v in values)
    if not nested or len(values) != n:
        if nested:
            raise ValueError(
                f"The 'labels' parameter of {where} must have one set of classes per id ({n}). "
                f"Got {len(values)} instead."
            )
        return [_label_set(classes, values, where)] * n
    return [_label_set(classes, v, where) for v in values]


def label_names(
    classes: list[str], multi_label: bool, labels: Any, n: int, where: str
) -> list[Any]:
    """``n`` labels as the store keeps them: class names, or tuples of names (multi-label)."""
    if multi_label:
        return list(_label_sets(classes, labels, n, where))
    if _is_one(labels):
        labels = [labels] * n  # one label for all ids
    try:
        values = list(labels)
    except TypeError:
        raise param_error(
            "labels", where, "class names or class indices", labels, TypeError
        ) from None
    if len(values) != n:
        raise ValueError(
            f"The 'labels' parameter of {where} must have one label per id ({n}). "
            f"Got {len(values)} instead."
        )
    return [class_name(classes, v, where) for v in values]


def targets(labels: list[Any], classes: list[str], multi_label: bool) -> np.ndarray:
    """Stored labels as training targets: class indices (int64), or multi-hot float32 rows
    (one sigmoid per class) for multi-label data."""
    index = {c: i for i, c in enumerate(classes)}
    if not multi_label:
        return np.array([index[lab] for lab in labels], dtype=np.int64)
    y = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, names in enumerate(labels):
        y[row, [index[c] for c in names]] = 1.0
    return y


def labels_key(labels: dict[Any, Any]) -> str:
    """A short hash of a labeled set (ids and labels, in no particular order)."""
    items = sorted(((str(k), type(k).__name__, v) for k, v in labels.items()), key=lambda t: t[:2])
    text = json.dumps(items, default=list, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_set(
    dataset: Any, labels: dict[Any, Any], classes: list[str], token: int, device: Any
) -> Any:
    """The labeled set as a :class:`~dal_widgets.training.TrainingSet` on ``device``, in pool
    order (one set, one order, one model), keyed by ``token`` and :func:`labels_key`."""
    import torch

    from dal_widgets.training import TrainingSet

    pos = np.sort(dataset.positions(list(labels)))
    y = targets([labels[i] for i in dataset.ids[pos].tolist()], classes, dataset.multi_label)

    def unlabeled() -> np.ndarray:
        return dataset.X[np.setdiff1d(np.arange(len(dataset)), pos)]

    X = torch.as_tensor(dataset.X[pos]).to(device)
    y_t = torch.as_tensor(y).to(device)
    return TrainingSet(
        X, y_t, len(classes), token, unlabeled, labels_key(labels), pos, lambda: dataset.X
    )
