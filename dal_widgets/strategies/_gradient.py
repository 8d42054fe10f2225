"""Expected model change: expected gradient length of the last layer, in closed form.

References: Settles, Craven & Ray, "Multiple-instance active learning" (NeurIPS 2008), which
introduces expected gradient length; Huang et al., "Active learning for speech recognition: the
power of gradients" (NIPS 2016 workshop), which applies it to deep networks.

For the last layer's weights and label c, the cross-entropy gradient is ``(p - e_c) h^T``, whose
Frobenius norm is ``|p - e_c| |h|``, and ``|p - e_c|^2 = |p|^2 - 2 p_c + 1``. So the expected
length ``sum_c p_c |p - e_c| |h|`` costs O(N x C), with no per-sample backward pass.
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._common import row_chunks
from dal_widgets.strategies._registry import register

__all__ = ["egl"]


@register("egl", needs={"probs", "embeddings"})
def egl(probs: np.ndarray, embeddings: np.ndarray):
    """Expected gradient length of the last layer under the model's own predictions (Settles et al., NeurIPS 2008).

    ``|h| sum_c p_c |p - e_c|``: the expected norm of the last-layer weight gradient if the
    label were drawn from the predicted distribution (Huang et al. 2016 for deep networks).
    """
    n, c = probs.shape
    out = np.empty(n, np.float64)
    for start, stop in row_chunks(n, c + embeddings.shape[1]):
        p = probs[start:stop].astype(np.float64)
        p2 = np.einsum("ij,ij->i", p, p)
        dist = np.sqrt(np.maximum(p2[:, None] - 2.0 * p + 1.0, 0.0))  # |p - e_c| per class
        h = embeddings[start:stop].astype(np.float64)
        out[start:stop] = np.einsum("ij,ij->i", p, dist) * np.sqrt(np.einsum("ij,ij->i", h, h))
    return out
