"""Argument checks shared by every layer.

Messages follow one shape, so users learn to read them once:
``The 'n' parameter of Session.query must be an int in [1, 1437]. Got 0 instead.``
Every error is a subclass of ValueError, TypeError or KeyError (the public contract).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "DalWarning",
    "DataNotFoundError",
    "check_array",
    "check_choice",
    "check_int",
    "check_real",
    "did_you_mean",
    "param_error",
    "short_repr",
]


class DalWarning(UserWarning):
    """Base class of the warnings dal_widgets emits (the test suite turns them into errors)."""


class DataNotFoundError(FileNotFoundError, ValueError):
    """A file or folder the user named does not exist (both a FileNotFoundError and, per the
    package's contract for bad input, a ValueError)."""


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters, with arrays described by shape and dtype."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_error(
    name: str, where: str, expected: str, got: Any, cls: type[Exception] = ValueError
) -> Exception:
    """Build (not raise) an error that names the parameter, the expectation and the value."""
    return cls(
        f"The {name!r} parameter of {where} must be {expected}. Got {short_repr(got)} instead."
    )


def check_int(
    value: Any, name: str, where: str, *, lo: int | None = None, hi: int | None = None
) -> int:
    """Return ``value`` as a Python int, or raise TypeError / ValueError."""
    lo_s = "-inf" if lo is None else str(lo)
    hi_s = "inf" if hi is None else str(hi)
    expected = f"an int in [{lo_s}, {hi_s}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise param_error(name, where, expected, value, TypeError)
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise param_error(name, where, expected, value)
    return value


def check_real(
    value: Any,
    name: str,
    where: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``value`` as a finite float in the given interval, or raise."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    expected = f"a real number in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise param_error(name, where, expected, value, TypeError)
    value = float(value)
    bad = not np.isfinite(value)
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value >= hi if hi_open else value > hi
    if bad:
        raise param_error(name, where, expected, value)
    return value


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_choice(value: Any, name: str, where: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; else a ValueError with a suggestion."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        expected = "one of " + ", ".join(repr(c) for c in choices)
        err = param_error(name, where, expected, value)
        if isinstance(value, str):
            err = ValueError(str(err) + did_you_mean(value, choices))
        raise err
    return value


def check_array(
    value: Any,
    name: str,
    where: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: Any = None,
    finite: bool = True,
    min_rows: int = 0,
) -> np.ndarray:
    """Convert to a numpy array and check its dimensions and values.

    ``finite`` rejects NaN and infinity in numeric arrays; ``min_rows`` the too-short ones.
    """
    if value is None:
        raise param_error(name, where, "an array", value, TypeError)
    try:
        arr = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise param_error(
            name, where, f"convertible to a numeric array ({exc})", value, TypeError
        ) from None
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in dims:
            raise ValueError(
                f"The {name!r} parameter of {where} must have {' or '.join(map(str, dims))} "
                f"dimensions. Got an array of shape {arr.shape} instead."
            )
    if arr.dtype == object or arr.dtype.kind in "USV":
        if dtype is not None or finite:
            raise param_error(name, where, "a numeric array", arr, TypeError)
    if finite and arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"The {name!r} parameter of {where} must hold finite numbers. "
            f"Got {bad} NaN or infinite value(s) instead."
        )
    if arr.ndim and arr.shape[0] < min_rows:
        raise ValueError(
            f"The {name!r} parameter of {where} must have at least {min_rows} row(s). "
            f"Got {arr.shape[0]} instead."
        )
    return arr
