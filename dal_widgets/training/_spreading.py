"""Label spreading over a k-nearest-neighbour graph of the pool (Zhou et al., "Learning with
local and global consistency", NIPS 2003), in torch, chunked, on the session's device.

The semi-supervised option ``TrainConfig(label_spreading=True)``: before each fit the labels
spread over the pool's graph, and the model trains on the labels and on every pool sample the
spreading reached, with its spread class as the target. The graph depends only on the pool, so
it is built once per pool and kept (:class:`SpreadGraph`); each fit only iterates.

Large pools: the graph covers a fixed random subset of ``max_nodes`` samples (the labeled ones
outside it join it through their own nearest neighbours in it, per fit), so building it costs
at most ``max_nodes**2 * D`` multiply-adds once. What is kept is ``O(max_nodes * k)`` (the
neighbours), plus, for a subset, its inputs on the CPU (``max_nodes * D`` floats) to connect
labeled samples outside it. The build checks a stop event between chunks, so cancelling a
fit does not wait for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["SpreadCancelled", "SpreadGraph", "knn", "spread"]

# Rows of the distance matrix computed at once: bounds memory to _CHUNK * nodes floats.
_CHUNK = 1024


def _flat(x: Any, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=torch.float32)
    return t.reshape(t.shape[0], -1)


class SpreadCancelled(Exception):
    """The graph's build saw its stop event."""


def knn(
    queries: torch.Tensor,
    points: torch.Tensor,
    k: int,
    *,
    self_rows: bool,
    stop: Any = None,
) -> torch.Tensor:
    """The ``k`` nearest rows of ``points`` for each row of ``queries`` (Euclidean), as an
    (M, k) tensor of row numbers; ``self_rows``: the queries are ``points`` itself, and a
    row is not its own neighbour. ``stop``: an event checked between chunks
    (:class:`SpreadCancelled` when set)."""
    sq_p = (points * points).sum(1)
    out = torch.empty(queries.shape[0], k, dtype=torch.long, device=points.device)
    for start in range(0, queries.shape[0], _CHUNK):
        if stop is not None and stop.is_set():
            raise SpreadCancelled
        q = queries[start : start + _CHUNK]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ points.T + sq_p
        if self_rows:
            rows = torch.arange(q.shape[0], device=points.device)
            d2[rows, rows + start] = float("inf")
        out[start : start + q.shape[0]] = torch.topk(d2, k, dim=1, largest=False).indices
    return out


def spread(
    edges: torch.Tensor,
    n_nodes: int,
    seeds: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    alpha: float,
    iters: int,
) -> torch.Tensor:
    """Iterate ``F <- alpha * S F + (1 - alpha) * Y`` on the symmetric normalized graph
    ``S = D^-1/2 W D^-1/2``, ``W = A + A^T`` for the (2, E) directed ``edges`` A (so mutual
    neighbours weigh 2); ``Y`` holds a one-hot row for each seed node. Returns F
    (n_nodes, n_classes); a row of zeros is a node no label reaches (another connected
    component, or a chain so long that the values underflow)."""
    dev = edges.device
    src = torch.cat([edges[0], edges[1]])
    dst = torch.cat([edges[1], edges[0]])
    deg = torch.zeros(n_nodes, device=dev).index_add_(
        0, dst, torch.ones_like(dst, dtype=torch.float32)
    )
    inv = deg.clamp(min=1).rsqrt()
    w = (inv[src] * inv[dst]).unsqueeze(1)
    y0 = torch.zeros(n_nodes, n_classes, device=dev)
    y0[seeds, y] = 1.0

    def step(f: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(y0).index_add_(0, dst, f[src] * w)
        return out.mul_(alpha).add_(y0, alpha=1 - alpha)

    f = y0.clone()  # filled in place below
    for _ in range(iters):
        f = step(f)
    # Nodes more than ``iters`` hops from every label (long chains): iterate on, and take
    # each one's values when it is first reached; the others keep the first ``iters``.
    missing = f.sum(1) == 0
    g = f
    for _ in range(9 * iters):
        if not bool(missing.any()):
            break
        g = step(g)
        reached = missing & (g.sum(1) > 0)
        f[reached] = g[reached]
        missing &= ~reached
    return f


class SpreadGraph:
    """The k-NN graph of one pool (or of a fixed subset of it), built once and reused."""

    def __init__(
        self,
        pool: Any,
        k: int,
        max_nodes: int,
        device: torch.device,
        seed: int = 0,
        stop: Any = None,
    ) -> None:
        self.pool = pool  # kept: identifies the pool (its id is only unique while it lives)
        self.k = k
        self.max_nodes = max_nodes
        self.device = device
        n = len(pool)
        if n > max_nodes:
            pick = np.random.default_rng(seed).choice(n, max_nodes, replace=False)
            self.nodes = np.sort(pick)
        else:
            self.nodes = np.arange(n)
        x = _flat(pool[self.nodes] if n > max_nodes else pool, device)
        self.k_eff = min(k, len(self.nodes) - 1)
        self.neighbours = knn(x, x, self.k_eff, self_rows=True, stop=stop)
        # Only a subset needs its inputs again (labeled samples outside it join per fit).
        self.x = x.cpu() if n > max_nodes else None

    def matches(self, pool: Any, k: int, max_nodes: int, device: torch.device) -> bool:
        """Whether this graph is the one for these settings (the same pool object)."""
        same = (k, max_nodes, device) == (self.k, self.max_nodes, self.device)
        return pool is self.pool and same

    def labels(
        self,
        positions: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        *,
        alpha: float = 0.99,
        iters: int = 30,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Spread the labels ``y`` of pool ``positions``; returns the pool positions the
        spreading reached that are not labeled, and their spread classes."""
        n_base = len(self.nodes)
        slot = np.full(len(self.pool), -1, dtype=np.int64)
        slot[self.nodes] = np.arange(n_base)
        outside = positions[slot[positions] < 0]  # labeled, not in the subset: join it
        slot[outside] = n_base + np.arange(outside.size)
        m = self.neighbours.shape[1]
        rows = torch.arange(n_base, device=self.device).repeat_interleave(m)
        edges = torch.stack([rows, self.neighbours.reshape(-1)])
        if outside.size:
            assert self.x is not None  # only a subset has samples outside it
            queries = _flat(self.pool[outside], torch.device("cpu"))
            extra = knn(queries, self.x, self.k_eff, self_rows=False).to(self.device)
            new = torch.arange(n_base, n_base + outside.size, device=self.device)
            edges = torch.cat(
                [edges, torch.stack([new.repeat_interleave(m), extra.reshape(-1)])], 1
            )
        n_nodes = n_base + outside.size
        seeds = torch.as_tensor(slot[positions], device=self.device)
        f = spread(
            edges,
            n_nodes,
            seeds,
            torch.as_tensor(y, device=self.device),
            n_classes,
            alpha=alpha,
            iters=iters,
        )
        reached = (f.sum(1) > 0).cpu().numpy()
        cls = f.argmax(1).cpu().numpy()
        reached[slot[positions]] = False  # the labels themselves are not spread targets
        node_pos = np.concatenate([self.nodes, outside])
        keep = np.flatnonzero(reached)
        return node_pos[keep], cls[keep]
