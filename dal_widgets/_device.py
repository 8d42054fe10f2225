"""The automatic device choice, shared by the layers (a leaf module: imports only torch, lazily)."""

from __future__ import annotations

from typing import Any

__all__ = ["auto_device"]


def auto_device() -> Any:
    """CUDA if available, then Apple's MPS, then the CPU (a ``torch.device``)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
