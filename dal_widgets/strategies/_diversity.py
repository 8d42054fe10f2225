"""Diversity on embeddings: core-set (k-center greedy), k-means, and Cluster-Margin.

References: Sener & Savarese, "Active learning for convolutional neural networks: a core-set
approach" (ICLR 2018); Zhdanov, "Diverse mini-batch active learning" (arXiv 1901.05954, 2019),
for k-means on embeddings with the sample nearest each centroid; Citovsky et al., "Batch
active learning at scale" (NeurIPS 2021, Cluster-Margin).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dal_widgets._checks import check_int
from dal_widgets.strategies._common import (
    argmax_random,
    as_tensor,
    min_sq_dist,
    one_thread,
    resolve_device,
    sq_dist_block,
    sq_norms,
)
from dal_widgets.strategies._kmeans import kmeans as _kmeans
from dal_widgets.strategies._registry import _top_n, register
from dal_widgets.strategies._uncertainty import top2

__all__ = ["cluster_margin", "coreset", "k_center_greedy", "kmeans", "round_robin"]

# Rows in the greedy loop's exact frontier at first (see k_center_greedy); it doubles when
# it runs thin.
_FRONTIER = 1024
# Cluster-Margin uses average-linkage clustering up to this many pre-filtered points (its
# condensed distance matrix is m^2/2 floats: 67 MB here), k-means beyond.
_HAC_MAX = 4096


def k_center_greedy(x: Any, sq: Any, best: Any, n: int, init: Any, rng: np.random.Generator):
    """Greedy k-center: ``n`` rows of ``x``, each the farthest from all centres so far.

    Parameters
    ----------
    x : tensor (M, D)
        Embeddings on the device.
    sq : numpy array (M,)
        Their squared norms.
    best : numpy array (M,)
        For each row, the squared distance to its nearest row of ``init``, or -inf for rows
        that must not be chosen. Updated in place (as upper bounds, see below).
    n : int
        How many centres to add.
    init : tensor (L, D), L >= 1
        The initial centres.
    rng : numpy.random.Generator
        Breaks ties.

    Returns
    -------
    numpy int array
        The chosen rows, in pick order.

    Notes
    -----
    The textbook loop updates every row's distance after each pick: a pass over all M x D
    embeddings per pick, memory-bound. Here only a frontier of the rows with the largest
    distances is kept exact (a contiguous copy of a few thousand rows, one small
    matrix-vector product per pick); every other row keeps its old distance, an upper bound,
    since distances only fall. While the frontier's best row beats every bound outside it,
    it is the textbook's pick; when it does not, the frontier is rebuilt from the bounds and
    brought up to date against the centres its new rows have not seen (one matrix product).
    The picks are the textbook ones (ties broken by the rng); memory is O(M).
    """
    import torch

    dev = x.device
    eps = float(torch.finfo(x.dtype).eps)
    m, n_init = x.shape[0], init.shape[0]
    # All centres, the initial ones first, then each pick as it is made.
    centres = torch.empty((n_init + n, x.shape[1]), dtype=x.dtype, device=dev)
    centres[:n_init] = init
    centres_sq = torch.empty(n_init + n, dtype=x.dtype, device=dev)
    centres_sq[:n_init] = sq_norms(init)
    seen = np.full(m, n_init, dtype=np.int64)  # centres each row's distance accounts for
    front: dict = {}

    def rebuild(size: int, count: Any):
        """Make the ``size`` rows with the largest bounds the (exact) frontier."""
        if front:  # the old frontier's exact distances go back into the bounds
            best[front["rows"]] = front["best"].cpu().numpy()
            seen[front["rows"]] = count
        rows = np.argpartition(best, m - size)[m - size :] if size < m else np.arange(m)
        index = torch.as_tensor(rows, device=dev)
        fx, fsq = x.index_select(0, index), torch.as_tensor(sq[rows], device=dev)
        fbest = torch.as_tensor(best[rows], device=dev)
        oldest = int(seen[rows].min())
        if oldest < count:
            min_sq_dist(fx, fsq, centres[oldest:count], centres_sq[oldest:count], out=fbest)
        floor = float(best[rows].min()) if size < m else -np.inf
        front.update(rows=rows, floor=floor, x=fx, sq=fsq, best=fbest)

    rebuild(min(m, _FRONTIER), n_init)
    picks = np.empty(n, dtype=np.int64)
    for step in range(n):
        count = n_init + step
        while True:
            top = float(front["best"].max())
            # The frontier's best beats every bound outside it, even allowing for rounding.
            if top > front["floor"] + 4 * eps * abs(top) or front["rows"].size == m:
                break
            rebuild(min(m, 2 * front["rows"].size), count)
        local = argmax_random(front["best"], rng)
        pick = int(front["rows"][local])
        picks[step] = pick
        best[pick] = -np.inf
        centres[count] = x[pick]
        centres_sq[count] = float(sq[pick])
        # The frontier learns the new centre; the pick itself is out for good.
        fbest = front["best"]
        dots = torch.mv(front["x"], centres[count]).mul_(2.0)
        d2 = front["sq"].add(centres_sq[count]).sub_(dots).clamp_min_(0.0)
        torch.minimum(fbest, d2, out=fbest)
        fbest[local] = -float("inf")
    return picks


@register("coreset", needs={"embeddings"}, kind="batch")
def coreset(
    n: int,
    *,
    candidates: np.ndarray,
    labeled_mask: np.ndarray,
    rng: np.random.Generator,
    embeddings: np.ndarray,
    device: Any = None,
):
    """Core-set: greedy k-center on embeddings, the labeled points as first centres (Sener & Savarese, ICLR 2018).

    Each pick is the candidate farthest from every labeled point and every earlier pick. With
    nothing labeled, the first pick is a random candidate. Chunked, O(N) extra memory, on the
    session's device.
    """
    import torch

    dev = resolve_device(device, "strategies.select('coreset')")
    x = as_tensor(embeddings, dev)
    labeled = np.flatnonzero(labeled_mask)
    # Most rows are candidates: work on all rows in place (no copy), blocking the others.
    # Few are (a pre-filtered set): gather them.
    whole = candidates.size * 2 > x.shape[0]
    xr = x if whole else x.index_select(0, torch.as_tensor(candidates, device=dev))
    first = []
    if labeled.size:
        init = x.index_select(0, torch.as_tensor(labeled, device=dev))
    else:  # nothing labeled: a random candidate is the first pick and the first centre
        pos = int(rng.integers(candidates.size))
        first = [int(candidates[pos]) if whole else pos]
        init = xr[first[0] : first[0] + 1]
    sq = sq_norms(xr)
    # Every row's distance to its nearest initial centre: one big product, up front.
    best = min_sq_dist(xr, sq, init, sq_norms(init))
    # The loop's bookkeeping lives on the host (a copy only on a GPU; views on the CPU).
    best, sq = best.cpu().numpy(), sq.cpu().numpy()
    if whole:
        blocked = np.ones(x.shape[0], dtype=bool)
        blocked[candidates] = False
        best[blocked] = -np.inf
    best[first] = -np.inf
    with one_thread(dev):  # many small operations per pick (see one_thread)
        rest = k_center_greedy(xr, sq, best, n - len(first), init, rng)
    picks = np.concatenate([np.asarray(first, dtype=np.int64), rest])
    return picks if whole else candidates[picks]


@register("kmeans", needs={"embeddings"}, kind="batch")
def kmeans(
    n: int,
    *,
    candidates: np.ndarray,
    labeled_mask: np.ndarray,
    rng: np.random.Generator,
    embeddings: np.ndarray,
    device: Any = None,
    max_iter: int = 20,
):
    """K-means diversity: cluster the candidates into n groups, take the one nearest each centroid (Zhdanov 2019).

    k-means++ seeding and Lloyd iterations in torch on the session's device, chunked.
    """
    import torch

    where = "strategies.select('kmeans')"
    max_iter = check_int(max_iter, "max_iter", where, lo=0)
    dev = resolve_device(device, where)
    x = as_tensor(embeddings, dev)
    rows = torch.as_tensor(candidates, device=dev)
    centres, labels_t, dist_t = _kmeans(x, n, rng, rows=rows, max_iter=max_iter)
    labels = labels_t.cpu().numpy()
    dist = dist_t.cpu().double().numpy()
    # The nearest member of each cluster; exact ties broken by a random key.
    order = np.lexsort((rng.random(labels.size), dist, labels))
    first = np.ones(order.size, dtype=bool)
    first[1:] = labels[order[1:]] != labels[order[:-1]]
    chosen = list(order[first])
    if len(chosen) < n:
        # A cluster without members (only with duplicate points): its nearest free candidate.
        taken = np.zeros(labels.size, dtype=bool)
        taken[chosen] = True
        sq = sq_norms(x)
        sq_c = sq_norms(centres)
        for c in np.setdiff1d(np.arange(centres.shape[0]), labels):
            d2 = sq_dist_block(
                x.index_select(0, rows), sq[rows], centres[c : c + 1], sq_c[c : c + 1]
            )
            d2 = d2.squeeze(1).cpu().double().numpy()
            d2[taken] = np.inf
            pos = int(np.argmin(d2))
            taken[pos] = True
            chosen.append(pos)
            if len(chosen) == n:
                break
    return candidates[np.asarray(chosen[:n], dtype=np.int64)]


def round_robin(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` positions: one random member per cluster in turn, smallest clusters first.

    Vectorized: each member gets (its rank in a random order within its cluster, the rank of
    its cluster by size), and the first ``n`` in that lexicographic order are taken.
    """
    _, labels = np.unique(labels, return_inverse=True)
    sizes = np.bincount(labels)
    cluster_rank = np.empty(sizes.size, np.int64)
    cluster_rank[np.lexsort((rng.random(sizes.size), sizes))] = np.arange(sizes.size)
    order = np.lexsort((rng.random(labels.size), labels))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    within = np.empty(labels.size, np.int64)
    within[order] = np.arange(labels.size) - starts[labels[order]]
    return np.lexsort((cluster_rank[labels], within))[:n]


@register("cluster_margin", needs={"probs", "embeddings"}, kind="batch")
def cluster_margin(
    n: int,
    *,
    candidates: np.ndarray,
    labeled_mask: np.ndarray,
    rng: np.random.Generator,
    probs: np.ndarray,
    embeddings: np.ndarray,
    device: Any = None,
    factor: Any = 10,
    n_clusters: int | None = None,
):
    """Cluster-Margin: lowest-margin samples, spread round-robin over clusters, smallest first (Citovsky et al., NeurIPS 2021).

    Takes the ``factor * n`` candidates with the smallest margin, clusters them (average-linkage
    agglomerative clustering into ``n_clusters`` groups; k-means above 4096 points), then
    visits the clusters from smallest to largest, one random member each, until ``n`` are
    chosen. The paper clusters the whole pool once with a distance threshold; clustering the
    pre-filtered set each round keeps the strategy a pure function of its arrays.

    Parameters
    ----------
    factor : int, default 10
        Size of the margin pre-filter as a multiple of ``n`` (the paper's k_m = 10 k_t).
    n_clusters : int, optional
        Number of clusters of the pre-filtered set; default ``n``.
    """
    import torch

    where = "strategies.select('cluster_margin')"
    factor = check_int(factor, "factor", where, lo=1)
    k = n if n_clusters is None else check_int(n_clusters, "n_clusters", where, lo=1)
    m = min(candidates.size, factor * n)
    first, second = top2(probs[candidates])
    pool = candidates[_top_n(second - first, m, rng)]
    k = min(k, m)
    if k == 1:
        labels = np.zeros(m, dtype=np.int64)  # one cluster (linkage needs two points)
    elif m <= _HAC_MAX:
        from scipy.cluster.hierarchy import fcluster, linkage

        feats = np.asarray(embeddings[pool], dtype=np.float64)
        labels = fcluster(linkage(feats, method="average"), t=k, criterion="maxclust")
    else:
        dev = resolve_device(device, where)
        x = as_tensor(embeddings, dev)
        rows = torch.as_tensor(pool, device=dev)
        labels = _kmeans(x, k, rng, rows=rows)[1].cpu().numpy()
    return pool[round_robin(labels, n, rng)]
