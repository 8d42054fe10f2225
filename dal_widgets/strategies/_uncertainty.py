"""Uncertainty sampling on softmax probabilities, and random sampling.

References: Lewis & Gale, "A sequential algorithm for training text classifiers" (SIGIR 1994);
Scheffer et al., "Active hidden Markov models for information extraction" (IDA 2001, margin);
Shannon entropy as in Settles, "Active Learning Literature Survey" (2009), section 3.1.

The arithmetic runs on blocks of rows. numpy reduces a short last axis (C = 10 classes) about
five times slower than it combines whole vectors, so each block is transposed to (C, rows) and
reduced with vector operations, or summed with ``np.einsum`` (single-threaded, unlike BLAS,
whose threads stall on small calls when another process holds a core).
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._common import float_dtype, row_chunks
from dal_widgets.strategies._registry import register

__all__ = ["entropy", "least_confidence", "margin", "random", "ratio", "row_entropy", "top2"]

# Above this many classes np.partition on each row beats a per-class loop over vectors.
_LOOP_CLASSES = 32


def top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and second-largest value of each row (float32 for float32 input, else float64)."""
    n, c = probs.shape
    dtype = float_dtype(probs.dtype)
    if c == 1:
        return probs[:, 0].astype(dtype), np.zeros(n, dtype)
    first = np.empty(n, dtype)
    second = np.empty(n, dtype)
    for start, stop in row_chunks(n, c):
        if c > _LOOP_CLASSES:
            part = np.partition(probs[start:stop].astype(dtype, copy=False), c - 2, axis=1)
            first[start:stop], second[start:stop] = part[:, -1], part[:, -2]
            continue
        block = np.ascontiguousarray(probs[start:stop].T, dtype=dtype)
        f, s = first[start:stop], second[start:stop]
        np.maximum(block[0], block[1], out=f)
        np.minimum(block[0], block[1], out=s)
        tmp = np.empty_like(f)
        for row in block[2:]:  # a loop over classes, each step vectorized over the block's rows
            np.maximum(s, np.minimum(f, row, out=tmp), out=s)
            np.maximum(f, row, out=f)
    return first, second


def row_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of an (N, C) probability array, with 0 log 0 = 0."""
    n, c = probs.shape
    dtype = float_dtype(probs.dtype)
    tiny = np.finfo(dtype).tiny
    out = np.empty(n, dtype)
    for start, stop in row_chunks(n, c):
        block = probs[start:stop].astype(dtype, copy=False)
        buf = np.maximum(block, tiny)  # log(tiny) is finite and tiny * log(tiny) == 0
        np.log(buf, out=buf)
        np.einsum("ij,ij->i", buf, block, out=out[start:stop])
    np.negative(out, out=out)
    return out


@register("random", kind="batch")
def random(n: int, *, candidates: np.ndarray, labeled_mask: np.ndarray, rng: np.random.Generator):
    """Uniformly random unlabeled samples: the baseline every strategy must beat.

    Passive sampling, the baseline in every active-learning study (Settles 2009, section 1).
    """
    return rng.choice(candidates, size=n, replace=False)


@register("least_confidence", needs={"probs"})
def least_confidence(probs: np.ndarray):
    """Least confidence: 1 - max class probability (Lewis & Gale, SIGIR 1994)."""
    n, c = probs.shape
    dtype = float_dtype(probs.dtype)
    out = np.empty(n, dtype)
    for start, stop in row_chunks(n, c):
        block = np.ascontiguousarray(probs[start:stop].T, dtype=dtype)
        np.max(block, axis=0, out=out[start:stop])
    return np.subtract(1.0, out, out=out)


@register("margin", needs={"probs"})
def margin(probs: np.ndarray):
    """Smallest margin between the top two class probabilities (Scheffer et al., IDA 2001)."""
    first, second = top2(probs)
    return np.subtract(second, first, out=first)


@register("ratio", needs={"probs"})
def ratio(probs: np.ndarray):
    """Ratio of confidences: second-best over best probability, 1 = a tie (Settles 2009)."""
    first, second = top2(probs)
    return second / np.maximum(first, np.finfo(first.dtype).tiny)


@register("entropy", needs={"probs"})
def entropy(probs: np.ndarray):
    """Shannon entropy of the predicted class distribution (Settles 2009, section 3.1)."""
    return row_entropy(probs)
