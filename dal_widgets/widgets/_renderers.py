"""How the labeler shows a sample: a registry of renderers by dataset kind, and tile payloads.

A renderer turns ``(dataset, sample_id)`` into data the view draws (an image, a text, a table
row); :func:`payload` finds the dataset's renderer and encodes images for the browser.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from dal_widgets._checks import param_error

__all__ = ["payload", "register_renderer", "zoom_payload"]

# kind -> renderer(dataset, sample_id) -> payload {"type": "image"|"text"|"table", ...}
_RENDERERS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {}


def register_renderer(kind: str, renderer: Callable[[Any, Any], dict[str, Any]]) -> None:
    """Teach the labeler to show samples of a dataset kind.

    ``renderer(dataset, sample_id)`` returns one of ``{"type": "image", "png": bytes}``,
    ``{"type": "text", "text": str}`` or ``{"type": "table", "row": {column: value}}``. The view
    shows all of them as data (images as images, everything else through ``textContent``), so a
    renderer cannot inject markup.
    """
    if not isinstance(kind, str) or not kind:
        raise param_error("kind", "register_renderer", "a non-empty str", kind, TypeError)
    if not callable(renderer):
        raise param_error(
            "renderer", "register_renderer", "a callable(dataset, sample_id)", renderer, TypeError
        )
    _RENDERERS[kind] = renderer


register_renderer("image", lambda ds, sid: {"type": "image", "png": ds.render(sid)})
register_renderer("text", lambda ds, sid: {"type": "text", "text": ds.render(sid)})
register_renderer("tabular", lambda ds, sid: {"type": "table", "row": ds.render(sid)})


def _src(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def payload(dataset: Any, sample_id: Any) -> dict[str, Any]:
    """What a tile shows of ``sample_id``: its renderer's output, an image as a data URL."""
    renderer = _RENDERERS.get(dataset.kind)
    if renderer is None:
        raise KeyError(
            f"No renderer for dataset kind {dataset.kind!r}; add one with register_renderer()."
        )
    out = dict(renderer(dataset, sample_id))
    if out.get("type") == "image":
        out["src"] = _src(out.pop("png"))
    return out


def zoom_payload(dataset: Any, sample_id: Any, size: int) -> dict[str, Any]:
    """The larger view of a sample: an image rendered anew from the original at ``size``;
    other kinds as their tile shows them."""
    if dataset.kind != "image":
        return payload(dataset, sample_id)
    return {"type": "image", "src": _src(dataset.render(sample_id, size=size))}
