"""BatchBALD: a batch that is informative jointly, not n copies of the same question.

Reference: Kirsch, van Amersfoort & Gal, "BatchBALD: Efficient and diverse batch acquisition
for deep Bayesian active learning" (NeurIPS 2019).

Greedy selection: having chosen the set S, the next point maximizes
``I(y_x; w | y_S) = H(y_x | y_S) - E_w H(y_x | w)`` (the other terms of the joint mutual
information do not depend on x). With the T MC-dropout passes as samples of w, the joint
distribution of the chosen labels is the mixture ``P(y_S) = mean_t prod_{i in S} p_it(y_i)``.

We keep a set of K label configurations of S with weights ``W_k`` and, for each, the row
``R[k, t] = P(y_S = k | w_t) / P(y_S = k)`` (row mean 1, so products of many probabilities
never underflow). Then ``P(y_x = c | y_S = k) = mean_t R[k, t] p_xt(c)``, one matrix product,
and ``H(y_x | y_S) = sum_k W_k H(y_x | y_S = k)``:

* exact while ``C ** |S|`` configurations fit in ``num_samples``: all of them, ``W_k = P(k)``;
* sampled beyond: ``num_samples`` configurations drawn from ``P(y_S)`` (a pass t, then each
  label from ``p_t``), ``W_k = 1 / num_samples``; each later pick extends every sample by one
  label drawn from the same pass, so the samples stay draws from the joint.

Candidates are scored in chunks, so memory is O(K x chunk x C), never O(N x K x C).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dal_widgets._checks import check_int
from dal_widgets.strategies._bayesian import pass_mean, zero_constant_rows
from dal_widgets.strategies._common import (
    argmax_random,
    as_tensor,
    one_thread,
    resolve_device,
    row_chunks,
)
from dal_widgets.strategies._registry import DegenerateScoresError, register
from dal_widgets.strategies._uncertainty import row_entropy

__all__ = ["JointEntropy", "bald_terms", "batchbald"]

_WHERE = "strategies.select('batchbald')"
# Elements of one (K, chunk x C) block of joint probabilities: small enough to stay in the
# L2 cache through the product, the log and the weighted sum (1 MB in float32).
_SCORE_CHUNK = 1 << 18


def bald_terms(mc_probs: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """For the given rows: ``E_t H[p_t]``, BALD, and whether every row's passes are identical.

    Gathers and processes the rows in chunks, so no copy of the whole array is made.
    """
    _, t, c = mc_probs.shape
    cond = np.empty(rows.size, np.float64)
    mi = np.empty(rows.size, np.float64)
    all_constant = True
    for start, stop in row_chunks(rows.size, t * c):
        block = mc_probs[rows[start:stop]]
        ent = row_entropy(block.reshape(-1, c)).reshape(stop - start, t)
        cond[start:stop] = ent.mean(axis=1, dtype=np.float64)
        res = mi[start:stop]
        np.subtract(row_entropy(pass_mean(block)), cond[start:stop], out=res)
        constant = zero_constant_rows(res, block)
        all_constant = all_constant and constant == stop - start
    return cond, np.maximum(mi, 0.0, out=mi), all_constant


def _sample_rows(cum: np.ndarray, which: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws: for each s, an index into column ``which[s]`` of ``cum`` (K, T).

    A loop over the T columns (not over samples); each column's draws use one searchsorted.
    Draws land only on entries with positive mass, even when rounding puts u at the top.
    """
    out = np.empty(which.size, np.int64)
    for col in np.unique(which):
        sel = np.flatnonzero(which == col)
        column = cum[:, col]
        idx = np.searchsorted(column, u[sel] * column[-1], side="right")
        last = int(np.flatnonzero(np.diff(column, prepend=0.0) > 0)[-1])
        out[sel] = np.minimum(idx, last)
    return out


class JointEntropy:
    """The configurations of the chosen labels: exact while small, sampled beyond.

    Parameters
    ----------
    n_passes : int
        T, the number of MC-dropout passes.
    num_samples : int
        Largest number of exact configurations, and the number of samples beyond that.
    rng : numpy.random.Generator
        Source of the samples.
    device, dtype
        Where and in which precision the rows live.
    """

    def __init__(
        self, n_passes: int, num_samples: int, rng: np.random.Generator, device: Any, dtype: Any
    ):
        import torch

        self.t = n_passes
        self.num_samples = num_samples
        self.rng = rng
        self.rows = torch.ones((1, n_passes), dtype=dtype, device=device)  # R, (K, T)
        self.weights = torch.ones(1, dtype=dtype, device=device)  # W, (K,)
        self.passes: np.ndarray | None = None  # the pass t of each sample, once sampled

    @property
    def exact(self) -> bool:
        """Whether the configurations are enumerated (True) or sampled (False)."""
        return self.passes is None

    def add(self, probs_tc: Any) -> None:
        """Add a chosen point, given its (T, C) tensor of per-pass probabilities."""
        import torch

        k, c = self.rows.shape[0], probs_tc.shape[1]
        if self.exact and k * c <= self.num_samples:
            # Every configuration (k, c): P(k, c | w_t) = P(k | w_t) p_t(c).
            rows = (self.rows.unsqueeze(1) * probs_tc.T.unsqueeze(0)).reshape(k * c, self.t)
            mass = rows.mean(dim=1)  # P(c | k) = mean_t R[k, t] p_t(c)
            weights = (self.weights.unsqueeze(1) * mass.reshape(k, c)).reshape(-1)
            keep = weights > 0  # impossible configurations carry no weight
            self.rows = rows[keep] / mass[keep].unsqueeze(1)
            self.weights = weights[keep]
            return
        if self.exact:
            self.sample()
        # Extend each sample by a label drawn from its own pass.
        p = probs_tc.cpu().double().numpy()
        cum = np.cumsum(p.T, axis=0)  # (C, T)
        assert self.passes is not None  # set by sample(), which ran above or earlier
        labels = _sample_rows(cum, self.passes, self.rng.random(self.passes.size))
        factor = probs_tc.T.index_select(0, torch.as_tensor(labels, device=probs_tc.device))
        rows = self.rows * factor.to(self.rows.dtype)
        self.rows = rows / rows.mean(dim=1, keepdim=True)

    def sample(self, num_samples: int | None = None) -> None:
        """Replace the exact configurations by draws from their joint (``num_samples`` of them)."""
        import torch

        s = self.num_samples if num_samples is None else num_samples
        passes = self.rng.integers(self.t, size=s)
        # P(k | w_t) = W_k R[k, t]: each column is a distribution over configurations.
        joint = (self.weights.unsqueeze(1) * self.rows).cpu().double().numpy()
        configs = _sample_rows(np.cumsum(joint, axis=0), passes, self.rng.random(s))
        self.rows = self.rows.index_select(0, torch.as_tensor(configs, device=self.rows.device))
        self.weights = torch.full((s,), 1.0 / s, dtype=self.rows.dtype, device=self.rows.device)
        self.passes = passes

    def conditional(self, probs_btc: Any) -> object:
        """``H(y_x | y_S)`` for a (b, T, C) tensor of candidates, as a (b,) tensor."""
        import torch

        b, t, c = probs_btc.shape
        flat = probs_btc.to(self.rows.dtype).permute(1, 0, 2).reshape(t, b * c)
        joint = torch.mm(self.rows, flat).div_(t)  # (K, b*C): P(y_x = c | y_S = k)
        # x log x with 0 log 0 = 0; log + in-place multiply is ~2x faster than xlogy here.
        plogp = joint.clamp_min(torch.finfo(joint.dtype).tiny).log_().mul_(joint)
        return -(self.weights @ plogp).reshape(b, c).sum(dim=1)


@register("batchbald", needs={"mc_probs"}, kind="batch")
def batchbald(
    n: int,
    *,
    candidates: np.ndarray,
    labeled_mask: np.ndarray,
    rng: np.random.Generator,
    mc_probs: np.ndarray,
    device: Any = None,
    num_samples: int = 1000,
):
    """BatchBALD: a greedy batch with maximal joint mutual information (Kirsch et al., NeurIPS 2019).

    Each pick maximizes ``H(y_x | y_S) - E_w H(y_x | w)`` given the picks S so far: a copy of
    an already chosen point adds little, however high its own BALD score.

    Parameters
    ----------
    num_samples : int, default 1000
        Joint entropies are exact while the C^|S| label configurations number at most this,
        then estimated from this many sampled configurations. Time per pick grows linearly.
    device : str or torch.device, optional
        Where the matrix products run (the session's device).
    """
    import torch

    num_samples = check_int(num_samples, "num_samples", _WHERE, lo=1)
    dev = resolve_device(device, _WHERE)
    _, t, c = mc_probs.shape
    cond, first_scores, all_constant = bald_terms(mc_probs, candidates)
    if all_constant and n < candidates.size:
        raise DegenerateScoresError(
            "Strategy 'batchbald' got identical MC-dropout passes for every candidate, so every "
            "score is 0 and its ranking means nothing. Check that the model has dropout layers."
        )
    # float32 input is computed in float32: the rows are renormalized after every pick, so
    # nothing underflows, and the log is the bottleneck (float64 costs ~1.4x).
    probs = as_tensor(mc_probs, dev)
    dtype = probs.dtype
    cand = torch.as_tensor(candidates, device=dev)
    cond_t = torch.as_tensor(cond, dtype=dtype, device=dev)
    state = JointEntropy(t, num_samples, rng, dev, dtype)
    with one_thread(dev):  # hundreds of cache-sized blocks per pick (see one_thread)
        picks = _greedy(n, candidates, probs, cand, cond_t, first_scores, state, rng, c)
    return candidates[np.asarray(picks, dtype=np.int64)]


def _greedy(
    n: int,
    candidates: np.ndarray,
    probs: Any,
    cand: Any,
    cond_t: Any,
    first_scores: np.ndarray,
    state: Any,
    rng: np.random.Generator,
    c: Any,
):
    """The greedy loop of :func:`batchbald`: positions into ``candidates``, in pick order."""
    import torch

    dev, dtype = state.rows.device, state.rows.dtype
    # On a GPU, bigger blocks mean fewer kernel launches; its memory is not the limit here.
    chunk = _SCORE_CHUNK if dev.type == "cpu" else 64 * _SCORE_CHUNK
    picked = torch.zeros(candidates.size, dtype=torch.bool, device=dev)
    picks = []
    for step in range(n):
        if step == 0:
            # With nothing chosen, the score is plain BALD.
            score = torch.as_tensor(first_scores, dtype=dtype, device=dev)
        else:
            score = torch.empty(candidates.size, dtype=dtype, device=dev)
            k = state.rows.shape[0]
            for start, stop in row_chunks(candidates.size, k * c, chunk):
                score[start:stop] = state.conditional(probs.index_select(0, cand[start:stop]))
            score -= cond_t
        score[picked] = -torch.inf
        best = argmax_random(score, rng)
        picked[best] = True
        picks.append(best)
        if step < n - 1:
            state.add(probs[int(candidates[best])].to(dtype))
    return picks
