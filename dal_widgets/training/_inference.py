"""Batched inference over the pool: probabilities, MC-dropout samples and embeddings.

One pass per chunk gives the softmax and the penultimate embedding together (a forward hook
on the classifier layer captures its input).

MC dropout is *consistent* (Kirsch et al. 2019): pass t applies one dropout mask, drawn once, to
every sample of the pool, so the T passes are T sampled sub-networks and ``mc_probs[:, t]`` are
the predictions of the same model for all samples. That is what BALD's expectation over models
means, and BatchBALD's joint entropies need it; with a fresh mask per sample, identical inputs
would get different scores. BatchNorm and everything else stay in eval mode.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from dal_widgets.training._fit import autocast_dtype
from dal_widgets.training._models import classifier_layer, has_dropout

__all__ = ["INFERABLE", "predict"]

#: Arrays this module can compute from a model (names as in the strategy registry).
INFERABLE = frozenset({"probs", "label_probs", "mc_probs", "embeddings", "loss_pred", "adv_dist"})


class _ConsistentDropout:
    """Forward hooks that replace each dropout layer's output by ``x * mask_t / (1 - p)``.

    Masks are drawn per pass ``t`` and layer from a generator seeded by ``(seed, t, layer)``,
    with the batch dimension (and for Dropout2d/3d the spatial ones) of size 1, so every sample
    and every chunk of the pool sees the same sub-network in pass ``t``.
    """

    def __init__(self, model: nn.Module, seed: int) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        self.seed = seed
        self.t = 0
        self.masks: dict[tuple[int, int], torch.Tensor] = {}
        self.handles: list[Any] = []

    def attach(self) -> None:
        self.owner = threading.get_ident()  # another thread's forward (an evaluation) is not ours
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, index: int) -> Any:
        def hook(
            module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            if threading.get_ident() != self.owner:
                return None  # the output as it is
            x = args[0]
            key = (self.t, index)
            mask = self.masks.get(key)
            if mask is None:
                p = float(cast(Any, module).p)  # every dropout layer has a float p
                shape = [1, *x.shape[1:]]
                if isinstance(module, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
                    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
                gen = torch.Generator(device="cpu").manual_seed(
                    (self.seed * 1_000_003 + self.t * 1_009 + index) & 0x7FFFFFFF
                )
                keep = (torch.rand(shape, generator=gen) >= p).to(x.dtype)
                mask = (keep / (1.0 - p) if p < 1.0 else keep).to(x.device)
                self.masks[key] = mask
            return x * mask

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _writable(batch: Any) -> np.ndarray:
    """A batch as an array torch may wrap: a read-only one (a memory-mapped file, an array
    from Ray's object store) is copied, a batch at a time, instead of wrapped with a warning."""
    arr = np.asarray(batch)
    return arr if arr.flags.writeable else arr.copy()


def _require_dropout(model: nn.Module) -> None:
    if not has_dropout(model):
        raise ValueError(
            "MC-dropout needs a model with dropout layers (nn.Dropout and friends); this model "
            f"({type(model).__name__}) has none, so every pass would give the same prediction and "
            "BALD-type scores would all be zero. Add dropout or choose a non-Bayesian strategy."
        )


def predict(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    needs: Iterable[str] = ("probs",),
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 2048,
    mc_samples: int = 20,
    seed: int = 0,
    precision: str = "fp32",
    deepfool_iters: int = 50,
) -> dict[str, np.ndarray]:
    """Compute the requested arrays for every row of ``X`` in chunks.

    Parameters
    ----------
    model : nn.Module
    X : array
        Inputs, as the model takes them.
    needs : iterable of str
        Any of ``"probs"`` (N, C), ``"label_probs"`` (N, C) per-class sigmoids for multi-label
        models, ``"mc_probs"`` (N, T, C), ``"embeddings"`` (N, D),
        ``"loss_pred"`` (N,) from the model's loss-prediction head and ``"adv_dist"`` (N,),
        DeepFool distances (``deepfool_iters`` iterations at most).
    mc_samples : int
        T for ``mc_probs``.
    seed : int
        Seeds the dropout masks of the MC passes (reproducible scores).
    precision : str
        As in ``TrainConfig.precision`` (autocast on CUDA only). Chunks go to CUDA through
        pinned memory, so the copy overlaps the previous chunk's compute.

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
    head = getattr(model, "loss_head", None)
    if "loss_pred" in wanted and head is None:
        raise ValueError(
            "loss_pred needs a model with a loss-prediction head (a 'loss_head' module that maps "
            "the penultimate embedding to a predicted loss); the default models carry one with "
            "TrainConfig(loss_head=True)."
        )
    if wanted & {"embeddings", "loss_pred"}:
        # Hooks see every thread's forward through this model (a query and an evaluation may
        # run at once): keep only this call's own.
        owner = threading.get_ident()
        hook = classifier_layer(model).register_forward_pre_hook(
            lambda _m, args: captured.append(args[0]) if threading.get_ident() == owner else None
        )
    if "mc_probs" in wanted:
        _require_dropout(model)
    consistent = _ConsistentDropout(model, seed) if "mc_probs" in wanted else None
    split = getattr(model, "mc_split", None)
    prefix, rest = split() if callable(split) else (nn.Identity(), model)
    amp_dtype = autocast_dtype(precision, device)
    try:
        with (
            torch.inference_mode(),
            torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ),
        ):
            for start in range(0, n, batch_size):
                xb = torch.as_tensor(
                    _writable(X[start : start + batch_size])
                    if not isinstance(X, torch.Tensor)
                    else X[start : start + batch_size]
                )
                if device.type == "cuda" and not xb.is_cuda:
                    xb = xb.pin_memory()
                xb = xb.to(device, dtype=torch.float32, non_blocking=True)
                if wanted & {"probs", "label_probs", "embeddings", "loss_pred"}:
                    captured.clear()
                    logits = model(xb)
                    if "probs" in wanted:
                        out["probs"].append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                    if "label_probs" in wanted:  # multi-label: independent per-class sigmoids
                        out["label_probs"].append(torch.sigmoid(logits.float()).cpu().numpy())
                    if "embeddings" in wanted:
                        out["embeddings"].append(captured[-1].float().flatten(1).cpu().numpy())
                    if "loss_pred" in wanted:
                        assert head is not None
                        pred = head(captured[-1].flatten(1)).float().reshape(-1)
                        out["loss_pred"].append(pred.cpu().numpy())
                if consistent is not None:
                    model.eval()  # dropout layers are identities; the hooks apply the masks
                    consistent.attach()
                    try:
                        passes = []
                        hidden = prefix(xb)  # the dropout-free layers run once, not T times
                        for t in range(mc_samples):
                            consistent.t = t
                            passes.append(torch.softmax(rest(hidden).float(), dim=1))
                    finally:
                        consistent.remove()
                    out["mc_probs"].append(torch.stack(passes, dim=1).cpu().numpy())
    finally:
        if hook is not None:
            hook.remove()
        model.eval()
    if "adv_dist" in wanted:  # needs gradients: outside inference_mode, in its own pass
        from dal_widgets.training._adversarial import deepfool_distance

        out["adv_dist"] = [
            deepfool_distance(
                model, X, device=device, batch_size=min(batch_size, 512), max_iter=deepfool_iters
            )
        ]
    return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in out.items()}
