"""Query by committee on (N, M, C) ``member_probs`` from M ensemble members.

References: Seung, Opper & Sompolinsky, "Query by committee" (COLT 1992); Dagan & Engelson,
"Committee-based sampling for training probabilistic classifiers" (ICML 1995, vote entropy);
McCallum & Nigam, "Employing EM and pool-based active learning for text classification"
(ICML 1998, KL divergence to the consensus); Beluch et al., "The power of ensembles for active
learning in image classification" (CVPR 2018), for deep ensembles.
"""

from __future__ import annotations

import numpy as np

from dal_widgets.strategies._bayesian import mutual_information
from dal_widgets.strategies._common import row_chunks
from dal_widgets.strategies._registry import register

__all__ = ["consensus_kl", "vote_entropy"]


@register("vote_entropy", needs={"member_probs"})
def vote_entropy(member_probs: np.ndarray):
    """Vote entropy: entropy of the members' hard votes (Dagan & Engelson, ICML 1995).

    ``-sum_c V(c)/M log(V(c)/M)`` where ``V(c)`` counts the members whose argmax is ``c``.
    """
    n, m, c = member_probs.shape
    out = np.empty(n, np.float64)
    for start, stop in row_chunks(n, m * c):
        votes = member_probs[start:stop].argmax(axis=2)
        rows = stop - start
        keys = (np.arange(rows)[:, None] * c + votes).ravel()
        share = np.bincount(keys, minlength=rows * c).reshape(rows, c) / m
        logs = np.log(np.where(share > 0, share, 1.0))  # 0 log 0 = 0
        out[start:stop] = -np.einsum("ij,ij->i", share, logs)
    return out


@register("consensus_kl", needs={"member_probs"})
def consensus_kl(member_probs: np.ndarray):
    """Mean KL divergence of each member from the consensus (McCallum & Nigam, ICML 1998).

    ``mean_m KL(p_m || mean_m p_m)``, which equals ``H[mean] - mean_m H[p_m]``: the same
    quantity as BALD, over ensemble members instead of dropout passes.
    """
    return mutual_information(member_probs)
