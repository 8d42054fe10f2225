"""DeepFool distances to the decision boundary, batched (Moosavi-Dezfooli et al. 2016).

DFAL (Ducoffe & Precup 2018) asks for the samples closest to the boundary: those a tiny
perturbation would move to another class. This computes, for every row of the pool, the L2 norm
of the DeepFool perturbation that flips the model's prediction, in chunks on the device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["deepfool_distance"]


def deepfool_distance(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    max_iter: int = 50,
    overshoot: float = 0.02,
) -> np.ndarray:
    """L2 size of the smallest DeepFool step that changes each prediction, float32 (N,).

    All rows of a chunk iterate together (one backward pass per class and iteration, vectorized
    over the rows); rows whose prediction has flipped stop moving. Rows that never flip within
    ``max_iter`` iterations get the distance travelled so far (they are far from the boundary).
    The model is in eval mode throughout (dropout off, BatchNorm frozen).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    out = np.empty(len(X), dtype=np.float32)
    for start in range(0, len(X), batch_size):
        x0 = torch.as_tensor(
            np.asarray(X[start : start + batch_size])
            if not isinstance(X, torch.Tensor)
            else X[start : start + batch_size]
        )
        x0 = x0.to(device, dtype=torch.float32)
        out[start : start + len(x0)] = _chunk(model, x0, max_iter, overshoot).cpu().numpy()
    return out


def _chunk(model: nn.Module, x0: torch.Tensor, max_iter: int, overshoot: float) -> torch.Tensor:
    b = x0.shape[0]
    flat = (b, -1)
    with torch.no_grad():
        original = model(x0).argmax(1)
    total = torch.zeros_like(x0)
    active = torch.ones(b, dtype=torch.bool, device=x0.device)
    rows = torch.arange(b, device=x0.device)
    for _ in range(max_iter):
        x = (x0 + (1 + overshoot) * total).detach().requires_grad_(True)
        logits = model(x)
        active &= logits.argmax(1) == original
        if not bool(active.any()):
            break
        n_classes = logits.shape[1]
        f0 = logits[rows, original]
        g0 = torch.autograd.grad(f0.sum(), x, retain_graph=True)[0].reshape(flat)
        best_ratio = torch.full((b,), float("inf"), device=x.device)
        best_step = torch.zeros_like(total).reshape(flat)
        for k in range(n_classes):  # a loop over classes, vectorized over the rows
            fk = logits[:, k] - f0
            gk = (
                torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < n_classes - 1)[
                    0
                ].reshape(flat)
                - g0
            )
            norm = gk.norm(dim=1).clamp_min(1e-12)
            ratio = fk.detach().abs() / norm
            ratio = torch.where(original == k, torch.full_like(ratio, float("inf")), ratio)
            better = ratio < best_ratio
            step = ((fk.detach().abs() + 1e-4) / norm**2).unsqueeze(1) * gk
            best_ratio = torch.where(better, ratio, best_ratio)
            best_step = torch.where(better.unsqueeze(1), step, best_step)
        total = total + (best_step * active.unsqueeze(1).to(best_step.dtype)).reshape(total.shape)
    return ((1 + overshoot) * total).reshape(flat).norm(dim=1)
