"""Plotly figures that take their column's width.

plotly's FigureWidget sizes itself to its container only on a window "resize" event (it
autosizes when the figure's layout has no width); rendered through anywidget it gets none when
it is first shown or when its column changes width, so it keeps plotly's default 700 px and
spills out of a narrow column (Notebook 7 caps cells at about 1,100 px). :class:`FitWidth` is an
invisible widget placed beside a figure: it watches the width of its nearest ``scope``
ancestor and sends that event when the width changes.
"""

from __future__ import annotations

import anywidget
import traitlets

__all__ = ["FitWidth"]

_ESM = """
function render({ model, el }) {
  el.style.display = "none";
  let observer = null, timer = null, tries = 0, last = -1, timers = [];
  // A width change can take a few frames to settle (a flex row wraps or unwraps after the
  // figure's own resize): resize soon, and again twice while it settles.
  const fire = () => {
    timers.forEach(clearTimeout);
    timers = [60, 300, 1000].map((ms) =>
      setTimeout(() => window.dispatchEvent(new Event("resize")), ms));
  };
  const attach = () => {
    const box = el.closest(model.get("scope"));
    if (!box) {
      if (tries++ < 100) timer = setTimeout(attach, 50);  // not in the page yet
      return;
    }
    observer = new ResizeObserver((entries) => {
      const width = Math.round(entries[0].contentRect.width);
      if (width !== last) { last = width; fire(); }
    });
    observer.observe(box);
  };
  attach();
  return () => { if (observer) observer.disconnect(); clearTimeout(timer); timers.forEach(clearTimeout); };
}
export default { render };
"""


class FitWidth(anywidget.AnyWidget):
    """Resizes the plotly figures of the page when its ``scope`` ancestor changes width."""

    _esm = _ESM
    scope = traitlets.Unicode(".dal-embedding").tag(sync=True)
