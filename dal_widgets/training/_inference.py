"""Batched inference over the pool: probabilities, MC-dropout samples and embeddings.

One pass per chunk gives the softmax and the penultimate embedding together (a forward hook
on the classifier layer captures its input). MC-dropout passes put only the dropout layers in
training mode; BatchNorm and everything else stay in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from dal_widgets.training._models import classifier_layer, has_dropout

__all__ = ["INFERABLE", "mc_dropout", "predict"]

#: Arrays this module can compute from a model (names as in the strategy registry).
INFERABLE = frozenset({"probs", "mc_probs", "embeddings"})


@contextmanager
def mc_dropout(model: nn.Module) -> Any:
    """Eval mode everywhere except the dropout layers (restored afterwards)."""
    if not has_dropout(model):
        raise ValueError(
            "MC-dropout needs a model with dropout layers (nn.Dropout and friends); this model "
            f"({type(model).__name__}) has none, so every pass would give the same prediction and "
            "BALD-type scores would all be zero. Add dropout or choose a non-Bayesian strategy."
        )
    model.eval()
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in drops:
        m.train()
    try:
        yield model
    finally:
        model.eval()


def predict(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    needs: Iterable[str] = ("probs",),
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 2048,
    mc_samples: int = 20,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Compute the requested arrays for every row of ``X`` in chunks.

    Parameters
    ----------
    model : nn.Module
    X : array
        Inputs, as the model takes them.
    needs : iterable of str
        Any of ``"probs"`` (N, C), ``"mc_probs"`` (N, T, C) and ``"embeddings"`` (N, D).
    mc_samples : int
        T for ``mc_probs``.
    seed : int
        Seeds the dropout masks of the MC passes (reproducible scores).

    Returns
    -------
    dict of numpy.ndarray (float32)
    """
    wanted = set(needs)
    unknown = wanted - INFERABLE
    if unknown:
        raise ValueError(
            f"predict cannot compute {sorted(unknown)}; it computes {sorted(INFERABLE)}."
        )
    device = torch.device(device)
    model = model.to(device).eval()
    n = len(X)
    out: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
    captured: list[torch.Tensor] = []
    hook = None
    if "embeddings" in wanted:
        hook = classifier_layer(model).register_forward_pre_hook(
            lambda _m, args: captured.append(args[0])
        )
    mc = mc_dropout(model) if "mc_probs" in wanted else None  # raises early without dropout
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                xb = torch.as_tensor(
                    np.asarray(X[start : start + batch_size])
                    if not isinstance(X, torch.Tensor)
                    else X[start : start + batch_size]
                )
                xb = xb.to(device, dtype=torch.float32, non_blocking=True)
                if wanted & {"probs", "embeddings"}:
                    captured.clear()
                    logits = model(xb)
                    if "probs" in wanted:
                        out["probs"].append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                    if "embeddings" in wanted:
                        out["embeddings"].append(captured[-1].float().flatten(1).cpu().numpy())
                if mc is not None:
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        torch.manual_seed(seed + start)
                        with mc_dropout(model):
                            passes = [
                                torch.softmax(model(xb).float(), dim=1) for _ in range(mc_samples)
                            ]
                    out["mc_probs"].append(torch.stack(passes, dim=1).cpu().numpy())
    finally:
        if hook is not None:
            hook.remove()
        model.eval()
    return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in out.items()}
