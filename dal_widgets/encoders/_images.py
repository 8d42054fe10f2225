"""Images for encoders: in-memory arrays resized as a batch, files decoded one batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["decode_files", "resize_batch"]


def resize_batch(x: Any, size: int | None, rgb: bool) -> Any:
    """A float tensor ``(n, C, H, W)`` in [0, 1] as ``(n, 3 or C, size, size)`` (bilinear,
    antialiased when shrinking); gray images are repeated to three channels when ``rgb``."""
    import torch
    import torch.nn.functional as F

    x = x.float()
    if x.ndim == 3:
        x = x[:, None]
    if rgb and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif rgb and x.shape[1] > 3:
        x = x[:, :3]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        shrink = min(x.shape[-2:]) > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=shrink)
    return torch.clamp(x, 0.0, 1.0).contiguous()


def decode_files(paths: Sequence[str], size: int, rgb: bool, resize: int | None = None) -> Any:
    """Decode image files to ``(n, 3 or 1, size, size)`` in [0, 1]: the shorter side scaled
    to ``resize`` (default ``size``), then the centre cropped (the usual protocol of pretrained networks). JPEGs
    decode in draft mode (at 1/2, 1/4 or 1/8 scale, still >= ``size``), so a huge photo costs
    little. A file that cannot be read any more raises a ValueError naming it."""
    import torch
    from PIL import Image

    from dal_widgets.data._files import _unreadable

    side = max(size, resize or size)
    out = np.empty((len(paths), size, size, 3 if rgb else 1), dtype=np.uint8)
    for i, path in enumerate(paths):  # one decode per file: the I/O is per file anyway
        try:
            with Image.open(path) as im:
                w, h = im.size
                scale = side / min(w, h)
                im.draft(
                    "RGB" if rgb else "L",
                    (max(side, round(w * scale)), max(side, round(h * scale))),
                )
                img = im.convert("RGB" if rgb else "L")
        except _unreadable() as exc:
            raise ValueError(
                f"The image file {path!r} could not be read for the encoder ({exc}). Remove it, "
                "or load the folder again (unreadable files are skipped then)."
            ) from None
        w, h = img.size
        scale = side / min(w, h)
        new = (max(side, round(w * scale)), max(side, round(h * scale)))
        img = img.resize(new, Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        out[i] = np.asarray(img).reshape(size, size, -1)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
