"""Chunked k-means in torch (k-means++ seeding, Lloyd iterations), on the session's device.

Used by the k-means diversity strategy, Cluster-Margin, TypiClust and ProbCover. Memory is O(N)
beyond the data (labels and distances) plus the k centroids: distance blocks are chunked and
rows are gathered chunk by chunk, so clustering a subset never copies it whole.

References: Lloyd, "Least squares quantization in PCM" (1982); Arthur & Vassilvitskii,
"k-means++: the advantages of careful seeding" (SODA 2007).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dal_widgets.strategies._common import (
    TORCH_CHUNK,
    one_thread,
    row_chunks,
    sq_dist_block,
    sq_norms,
)

__all__ = ["assign", "d2_sample", "kmeans", "kmeans_pp"]

# k-means++ seeding runs on a random subsample of at most this many points (plus 10 per centre):
# seeding costs one pass over its points per centre, the Lloyd iterations then use everything.
_SEED_SAMPLE = 10_000


def _rows(x: Any, rows: Any, start: int, stop: int) -> Any:
    # index_select: much faster than advanced indexing (x[idx]) on the CPU.
    return x[start:stop] if rows is None else x.index_select(0, rows[start:stop])


def assign(x: Any, rows: Any, centres: Any) -> tuple[Any, Any]:
    """Nearest centre and squared distance to it for each row (``rows`` indexes ``x``, or all)."""
    import torch

    n = x.shape[0] if rows is None else rows.shape[0]
    sq_c = sq_norms(centres)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    for start, stop in row_chunks(n, max(centres.shape[0], x.shape[1]), TORCH_CHUNK):
        block = _rows(x, rows, start, stop)
        d2 = sq_dist_block(block, sq_norms(block), centres, sq_c)
        dist[start:stop], labels[start:stop] = d2.min(dim=1)
    return labels, dist


def kmeans_pp(x: Any, k: int, rng: np.random.Generator) -> Any:
    """k-means++ seeding on the rows of ``x`` (D^2 sampling, draws from ``rng``); (k, D) centres.

    The first centre is uniform; each next one is drawn with probability proportional to the
    squared distance to the nearest centre so far. Chosen points have distance exactly 0 and
    cannot be drawn twice; when all remaining mass is 0 (duplicates) draws are uniform over
    the points not yet chosen.
    """
    import torch

    n = x.shape[0]
    sq = sq_norms(x)
    chosen = torch.zeros(n, dtype=torch.bool, device=x.device)
    first = int(rng.integers(n))
    idx = [first]
    chosen[first] = True
    best = sq_dist_block(x, sq, x[first : first + 1], sq[first : first + 1]).squeeze(1)
    best[first] = 0.0
    for _ in range(1, k):
        idx.append(d2_sample(best, chosen, rng))
        new = idx[-1]
        chosen[new] = True
        d2 = sq_dist_block(x, sq, x[new : new + 1], sq[new : new + 1]).squeeze(1)
        torch.minimum(best, d2, out=best)
        best[new] = 0.0  # exactly: rounding can leave a tiny self-distance
    return x.index_select(0, torch.as_tensor(idx, device=x.device))


def d2_sample(weights: Any, chosen: Any, rng: np.random.Generator) -> int:
    """One draw with probability proportional to ``weights`` (0 where ``chosen``).

    Uses a float64 cumulative sum and one ``rng.random()`` draw; falls back to a uniform
    draw over the unchosen positions when every weight is 0.
    """
    import torch

    # float64 sums (on the host for MPS, which has no float64).
    host = weights.device.type == "mps"
    cum = torch.cumsum((weights.cpu() if host else weights).double(), dim=0)
    total = float(cum[-1])
    if total > 0:
        u = torch.tensor([rng.random() * total], dtype=torch.float64, device=cum.device)
        pos = int(torch.searchsorted(cum, u, right=True))
        if pos >= weights.shape[0] or bool(chosen[pos]) or float(weights[pos]) <= 0:
            # Rounding put u at the very top: take the last position with positive weight.
            pos = int(torch.nonzero(weights > 0).flatten()[-1])
        return pos
    free = torch.nonzero(~chosen).flatten()
    return int(free[int(rng.integers(free.numel()))])


def kmeans(
    x: Any,
    k: int,
    rng: np.random.Generator,
    *,
    rows: Any = None,
    max_iter: int = 20,
    n_init: int = 1,
) -> tuple[Any, Any, Any]:
    """Cluster the rows of ``x`` (or ``x[rows]``) into ``k`` clusters.

    Returns
    -------
    centres : tensor (k, D)
    labels : long tensor (n,)
    dist : tensor (n,)
        Squared distance of each row to its centre.

    Lloyd iterations stop when no label changes or after ``max_iter``. A cluster that empties
    is re-seeded with the point farthest from its centre, as scikit-learn does. ``n_init``
    runs (each its own seeding) keep the one with the smallest sum of squared distances.
    """
    best = None
    for _ in range(n_init):
        run = _kmeans_once(x, k, rng, rows, max_iter)
        if best is None or float(run[2].sum()) < float(best[2].sum()):
            best = run
    assert best is not None  # n_init >= 1
    return best


def _kmeans_once(
    x: Any, k: int, rng: np.random.Generator, rows: Any, max_iter: int
) -> tuple[Any, Any, Any]:
    import torch

    n = x.shape[0] if rows is None else rows.shape[0]
    k = min(k, n)
    sample_size = min(n, _SEED_SAMPLE + 10 * k)
    sample = np.sort(rng.choice(n, size=sample_size, replace=False)) if sample_size < n else None
    if sample is None:
        seed_x = x if rows is None else x.index_select(0, rows)
    else:
        pick = torch.as_tensor(sample, device=x.device)
        seed_x = x.index_select(0, pick if rows is None else rows[pick])
    with one_thread(x.device):  # one small pass per centre (see one_thread)
        centres = kmeans_pp(seed_x, k, rng)
    labels, dist = assign(x, rows, centres)
    for _ in range(max_iter):
        sums = torch.zeros_like(centres)
        for start, stop in row_chunks(n, x.shape[1], TORCH_CHUNK):
            sums.index_add_(0, labels[start:stop], _rows(x, rows, start, stop))
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        centres = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        if empty.numel():
            far = torch.topk(dist, empty.numel()).indices
            far_rows = far if rows is None else rows[far]
            centres[empty] = x.index_select(0, far_rows)
        new_labels, dist = assign(x, rows, centres)
        changed = bool((new_labels != labels).any())
        labels = new_labels
        if not changed and not empty.numel():
            break
    return centres, labels, dist
