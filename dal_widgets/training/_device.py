"""Device choice: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

from typing import Any

import torch

from dal_widgets._checks import param_error
from dal_widgets._device import auto_device

__all__ = ["resolve_device"]


def resolve_device(device: Any = "auto", where: str = "Session") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; other values must name an available device."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            return auto_device()
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise param_error(
                "device", where, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", device
            ) from None
    else:
        raise param_error(
            "device", where, "'auto', a device name or a torch.device", device, TypeError
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise param_error(
            "device",
            where,
            "an available device (CUDA is not available here; use 'auto' or 'cpu')",
            device,
        )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise param_error(
            "device",
            where,
            "an available device (MPS is not available here; use 'auto' or 'cpu')",
            device,
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise param_error("device", where, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", device)
    return dev
