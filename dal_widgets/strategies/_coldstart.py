"""Cold start, for tiny budgets: TypiClust and ProbCover on representations alone.

References: Hacohen, Dekel & Weinshall, "Active learning on a budget: opposite strategies suit
high and low budgets" (ICML 2022, TypiClust); Yehuda, Dekel, Hacohen & Weinshall, "Active
learning through a covering lens" (NeurIPS 2022, ProbCover).

Both need only a representation of the inputs, so they work before any model exists: they
require ``features`` (raw or self-supervised) and use the model's ``embeddings`` instead when
the session passes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dal_widgets._checks import check_int, check_real
from dal_widgets.strategies._common import (
    TORCH_CHUNK,
    argmax_random,
    as_tensor,
    resolve_device,
    row_chunks,
    sq_dist_block,
    sq_norms,
)
from dal_widgets.strategies._kmeans import kmeans as _kmeans
from dal_widgets.strategies._registry import register

__all__ = ["coverage_radius", "mean_knn_distance", "probcover", "typiclust"]


def mean_knn_distance(x: Any, k: int):
    """Mean Euclidean distance of each row of ``x`` to its ``k`` nearest other rows (chunked)."""
    import torch

    m = x.shape[0]
    sq = sq_norms(x)
    out = torch.empty(m, dtype=x.dtype, device=x.device)
    for start, stop in row_chunks(m, m, TORCH_CHUNK):
        d2 = sq_dist_block(x[start:stop], sq[start:stop], x, sq)
        own = torch.arange(start, stop, device=x.device)
        d2[own - start, own] = float("inf")  # not one's own neighbour
        out[start:stop] = torch.topk(d2, k, dim=1, largest=False).values.sqrt_().mean(dim=1)
    return out


@register("typiclust", needs={"features"}, optional={"embeddings"}, kind="batch")
def typiclust(
    n: int,
    *,
    candidates: np.ndarray,
    labeled_mask: np.ndarray,
    rng: np.random.Generator,
    features: np.ndarray,
    embeddings: np.ndarray | None = None,
    device: Any = None,
    max_clusters: int = 500,
    k_neighbors: int = 20,
    min_cluster_size: int = 5,
    n_init: int = 3,
):
    """TypiClust: the most typical sample of each large cluster without labels (Hacohen et al., ICML 2022).

    K-means splits the pool into ``min(labeled + n, max_clusters)`` clusters (the best of
    ``n_init`` runs: with 10 labels on digits, 3 runs cover 8.8 classes on average against
    8.4 for one). Clusters are
    visited by fewest labeled samples, then largest size (clusters of ``min_cluster_size``
    or fewer are skipped, as in the authors' code), cycling if needed; from each the candidate
    with the highest typicality, the inverse mean Euclidean distance to its
    ``min(k_neighbors, size // 2)`` nearest unlabeled neighbours in the cluster, is taken.
    Runs on ``embeddings`` when given, else on ``features``.
    """
    import torch

    where = "strategies.select('typiclust')"
    max_clusters = check_int(max_clusters, "max_clusters", where, lo=1)
    k_neighbors = check_int(k_neighbors, "k_neighbors", where, lo=1)
    min_cluster_size = check_int(min_cluster_size, "min_cluster_size", where, lo=0)
    n_init = check_int(n_init, "n_init", where, lo=1, hi=100)
    dev = resolve_device(device, where)
    x = as_tensor(features if embeddings is None else embeddings, dev)
    n_pool = x.shape[0]
    n_labeled = int(labeled_mask.sum())
    k = min(n_labeled + n, max_clusters, n_pool)
    labels = _kmeans(x, k, rng, n_init=n_init)[1].cpu().numpy()
    sizes = np.bincount(labels, minlength=k)
    labeled_counts = np.bincount(labels[labeled_mask], minlength=k)
    free = np.zeros(n_pool, dtype=bool)
    free[candidates] = True
    free_counts = np.bincount(labels[free], minlength=k)
    # Fewest labeled first, then largest; exact ties in random order.
    ranking = np.lexsort((rng.random(k), -sizes, labeled_counts))
    order = ranking[(sizes[ranking] > min_cluster_size) & (free_counts[ranking] > 0)]
    by_cluster = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[by_cluster], np.arange(k + 1))
    picks: list[int] = []
    visit = 0
    while len(picks) < n:
        if order.size == 0:
            # The large clusters ran out of candidates: the small ones, same ranking.
            order = ranking[free_counts[ranking] > 0]
        cluster = order[visit % order.size]
        visit += 1
        members = by_cluster[bounds[cluster] : bounds[cluster + 1]]
        members = members[free[members]]
        if members.size == 0:
            order = order[order != cluster]
            continue
        knn = min(k_neighbors, members.size // 2)
        if knn == 0:
            pick = int(members[rng.integers(members.size)])
        else:
            dist = mean_knn_distance(x.index_select(0, torch.as_tensor(members, device=dev)), knn)
            pick = int(members[argmax_random(-dist, rng)])
        picks.append(pick)
        free[pick] = False
        free_counts[cluster] -= 1
    return np.asarray(picks, dtype=np.int64)


def coverage_radius(x: Any, purity: float, n_clusters: int, rng: np.random.Generator):
    """The largest ball radius at which a ``purity`` share of balls hold one k-means cluster.

    ProbCover's choice of delta: cluster into ``n_clusters`` (a stand-in for the classes); a
    ball around x is pure iff its nearest point of another cluster is at least delta away,
    so the radius is a quantile of those distances, found in one chunked pass.
    """
    import torch

    labels = _kmeans(x, n_clusters, rng)[1]
    m = x.shape[0]
    sq = sq_norms(x)
    other = torch.empty(m, dtype=x.dtype, device=x.device)
    for start, stop in row_chunks(m, m, TORCH_CHUNK):
        d2 = sq_dist_block(x[start:stop], sq[start:stop], x, sq)
        d2[labels[start:stop].unsqueeze(1) == labels.unsqueeze(0)] = float("inf")
        other[start:stop] = d2.amin(dim=1)
    gaps = other.sqrt().cpu().double().numpy()
    radius = float(np.sort(gaps)[int(np.floor((1.0 - purity) * m))])
    if not np.isfinite(radius) or radius <= 0:
        # One cluster, or duplicates across clusters: fall back to the smallest positive gap.
        positive = gaps[np.isfinite(gaps) & (gaps > 0)]
        radius = float(positive.min()) if positive.size else 1.0
    return radius


def _count_within(x: Any, sq: Any, rows: Any, cols: Any, r2: Any):
    """For each of ``rows`` the number of ``cols`` closer than sqrt(r2) (chunked)."""
    import torch

    counts = torch.zeros(rows.shape[0], dtype=torch.long, device=x.device)
    if cols.shape[0] == 0:
        return counts
    xc, sqc = x.index_select(0, cols), sq[cols]
    for start, stop in row_chunks(rows.shape[0], cols.shape[0], TORCH_CHUNK):
        r = rows[start:stop]
        counts[start:stop] = (sq_dist_block(x.index_select(0, r), sq[r], xc, sqc) < r2).sum(dim=1)
    return counts


@register("probcover", needs={"features"}, optional={"embeddings"}, kind="batch")
def probcover(
    n: int,
    *,
    candidates: np.ndarray,
    labeled_mask: np.ndarray,
    rng: np.random.Generator,
    features: np.ndarray,
    embeddings: np.ndarray | None = None,
    device: Any = None,
    radius: float | None = None,
    purity: float = 0.95,
    n_clusters: int = 10,
):
    """ProbCover: greedy max coverage of the pool by balls of radius delta (Yehuda et al., NeurIPS 2022).

    Each pick is the candidate whose ball (distance < delta) holds the most points not yet
    covered by a labeled sample or an earlier pick; when everything is covered, the rest are
    random. ``radius`` defaults to the largest delta at which a ``purity`` share of balls
    fall inside one of ``n_clusters`` k-means clusters, the paper's criterion with k-means
    standing in for the unknown classes. Memory is O(N): the delta-graph is never stored,
    out-degrees are kept as counts and lowered as points become covered. Runs on
    ``embeddings`` when given, else on ``features``.
    """
    import torch

    where = "strategies.select('probcover')"
    purity = check_real(purity, "purity", where, lo=0.0, hi=1.0, hi_open=True)
    n_clusters = check_int(n_clusters, "n_clusters", where, lo=1)
    if radius is not None:
        radius = check_real(radius, "radius", where, lo=0.0, lo_open=True)
    dev = resolve_device(device, where)
    x = as_tensor(features if embeddings is None else embeddings, dev)
    n_pool = x.shape[0]
    if radius is None:
        radius = coverage_radius(x, purity, min(n_clusters, n_pool), rng)
    r2 = radius * radius
    sq = sq_norms(x)
    covered = torch.zeros(n_pool, dtype=torch.bool, device=dev)
    everything = torch.arange(n_pool, device=dev)
    labeled = torch.as_tensor(np.flatnonzero(labeled_mask), device=dev)
    if labeled.numel():
        covered = _count_within(x, sq, everything, labeled, r2) > 0
    cand = torch.as_tensor(candidates, device=dev)
    # Out-degree of each candidate in the delta-graph, counting uncovered points only.
    degree = _count_within(x, sq, cand, everything[~covered], r2)
    taken = torch.zeros(candidates.size, dtype=torch.bool, device=dev)
    picks: list[int] = []
    while len(picks) < n:
        score = torch.where(taken, -1, degree)
        if int(score.max()) <= 0:
            rest = np.flatnonzero(~taken.cpu().numpy())
            extra = rng.choice(rest, size=n - len(picks), replace=False)
            picks.extend(int(e) for e in extra)
            break
        pick = argmax_random(score.cpu().numpy(), rng)
        picks.append(pick)
        taken[pick] = True
        p = cand[pick : pick + 1]
        near = sq_dist_block(x, sq, x.index_select(0, p), sq[p]).squeeze(1) < r2
        new = torch.nonzero(near & ~covered).flatten()
        new = torch.cat([new, p[~covered[p]]]).unique()  # a pick always covers itself
        covered[new] = True
        degree -= _count_within(x, sq, cand, new, r2)
    return candidates[np.asarray(picks, dtype=np.int64)]
