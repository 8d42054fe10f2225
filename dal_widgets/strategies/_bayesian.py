"""Deep Bayesian active learning with MC dropout: scores on (N, T, C) ``mc_probs``.

References: Gal, Islam & Ghahramani, "Deep Bayesian active learning with image data"
(ICML 2017), which compares all four on MNIST; Houlsby et al., "Bayesian active learning for
classification and preference learning" (2011, BALD); Freeman, "Elementary applied statistics"
(1965, variation ratios); Kampffmeyer et al., "Semantic segmentation of small objects and
modeling of uncertainty in urban remote sensing images using deep convolutional neural
networks" (CVPR workshops 2016, mean STD).

All four work on row chunks of a few MB, so memory stays bounded for pools of millions. Sums
over passes and classes use ``np.einsum``, which is several times faster than numpy's
reductions over a short axis and, unlike a BLAS matrix product, single-threaded: a threaded
BLAS call on tiny chunks stalls whenever another process holds a core (measured 20x slower
on a shared 2-core machine). A sample whose T passes are all identical gets a score of
exactly zero where the true value is zero (BALD, mean STD): then a network without dropout
gives all-equal scores, which the registry reports, instead of a ranking of rounding noise.
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._common import float_dtype, row_chunks
from dal_widgets.strategies._registry import register
from dal_widgets.strategies._uncertainty import row_entropy

__all__ = [
    "bald",
    "constant_rows",
    "max_entropy",
    "mean_std",
    "mode_fraction",
    "mutual_information",
    "variation_ratios",
    "zero_constant_rows",
]


def pass_mean(block: np.ndarray) -> np.ndarray:
    """Mean over the middle axis of an (n, T, C) block, in float64."""
    out = np.einsum("itc->ic", block, dtype=np.float64)
    out /= block.shape[1]
    return out


def constant_rows(block: np.ndarray) -> np.ndarray:
    """True for the rows of an (n, T, C) block whose T distributions are all identical."""
    same = np.equal(block, block[:, :1])
    return same.reshape(block.shape[0], -1).all(axis=1)


# Scores below this are rounding noise or truly tiny; only those rows are checked for
# identical passes, so the comparison pass costs time only when dropout is missing.
_NOISE = 1e-4


def zero_constant_rows(scores: np.ndarray, block: np.ndarray) -> int:
    """Set ``scores`` to exactly 0 where the rows of ``block`` have identical passes.

    Returns how many rows were constant.
    """
    suspects = np.flatnonzero(scores < _NOISE)
    if suspects.size == 0:
        return 0
    constant = suspects[constant_rows(block[suspects])]
    scores[constant] = 0.0
    return int(constant.size)


def mutual_information(arr: np.ndarray) -> np.ndarray:
    """H[mean_t p_t] - mean_t H[p_t] for each row of an (N, T, C) array, in nats, >= 0.

    This is BALD for MC-dropout passes, and for ensemble members it equals the mean KL
    divergence of each member from the consensus (the generalized Jensen-Shannon divergence).
    """
    n, t, c = arr.shape
    dtype = float_dtype(arr.dtype)
    tiny = np.finfo(dtype).tiny
    out = np.empty(n, np.float64)
    for start, stop in row_chunks(n, t * c):
        block3 = arr[start:stop].astype(dtype, copy=False)
        block = block3.reshape(stop - start, t * c)
        buf = np.maximum(block, tiny)  # 0 log 0 = 0 without a warning: tiny * log(tiny) == 0
        np.log(buf, out=buf)
        neg_cond = np.einsum("ij,ij->i", block, buf) / t  # -E_t H[p_t]
        mean = pass_mean(block3)
        res = out[start:stop]
        np.add(row_entropy(mean), neg_cond, out=res)
        zero_constant_rows(res, block3)
    # Rounding can leave values a few ulps below the true minimum of 0.
    return np.maximum(out, 0.0, out=out)


def mode_fraction(arr: np.ndarray) -> np.ndarray:
    """Fraction of the T (or M) distributions of each row whose argmax is the modal class."""
    n, t, c = arr.shape
    out = np.empty(n, np.float64)
    for start, stop in row_chunks(n, t * c):
        votes = arr[start:stop].argmax(axis=2)  # (rows, T)
        rows = stop - start
        keys = (np.arange(rows)[:, None] * c + votes).ravel()
        counts = np.bincount(keys, minlength=rows * c).reshape(rows, c)
        out[start:stop] = counts.max(axis=1) / t
    return out


@register("bald", needs={"mc_probs"})
def bald(mc_probs: np.ndarray):
    """BALD: mutual information between the label and the weights (Houlsby et al. 2011; Gal et al., ICML 2017).

    ``H[mean_t p_t] - mean_t H[p_t]`` over the T MC-dropout passes: high where the passes are
    each confident but disagree with one another.
    """
    return mutual_information(mc_probs)


@register("variation_ratios", needs={"mc_probs"})
def variation_ratios(mc_probs: np.ndarray):
    """Variation ratios: share of MC passes that disagree with the modal class (Freeman 1965; Gal et al., ICML 2017).

    ``1 - f_mode / T`` where ``f_mode`` counts the passes whose argmax is the most common one,
    as in Gal et al.'s experiments. The scores are multiples of 1/T, so ties are frequent and
    are broken at random by the registry.
    """
    return 1.0 - mode_fraction(mc_probs)


@register("mean_std", needs={"mc_probs"})
def mean_std(mc_probs: np.ndarray):
    """Mean over classes of the standard deviation of p(c) across MC passes (Kampffmeyer et al. 2016; Gal et al., ICML 2017).

    ``mean_c sqrt(E_t[p_t(c)^2] - E_t[p_t(c)]^2)``, computed from centred values for accuracy.
    """
    n, t, c = mc_probs.shape
    dtype = float_dtype(mc_probs.dtype)
    out = np.empty(n, np.float64)
    for start, stop in row_chunks(n, t * c):
        block3 = mc_probs[start:stop].astype(dtype, copy=False)
        dev = block3 - pass_mean(block3)[:, None, :].astype(dtype)
        np.square(dev, out=dev)
        std = pass_mean(dev)
        np.sqrt(std, out=std)
        res = out[start:stop]
        res[:] = std.mean(axis=1)
        zero_constant_rows(res, block3)
    return out


@register("max_entropy", needs={"mc_probs"})
def max_entropy(mc_probs: np.ndarray):
    """Max entropy: entropy of the mean MC-dropout prediction (Shannon 1948; Gal et al., ICML 2017)."""
    n, t, c = mc_probs.shape
    out = np.empty(n, np.float64)
    for start, stop in row_chunks(n, t * c):
        out[start:stop] = row_entropy(pass_mean(mc_probs[start:stop]))
    return out
