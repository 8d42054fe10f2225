"""The selection map with 100,000 points in a real JupyterLab + headless Chromium.

Times, in the browser, how long plotly takes to redraw the map after a zoom, a pan and a hover
(Plotly.relayout / Plotly.Fx.hover promises, 5 of each, median), and the kernel-to-browser
round trip of a color update from Python. Uses the test suite's JupyterLab fixtures
(tests/_lab.py); needs chromium and playwright like the browser tests. Headless Chromium renders
WebGL in software here, so a desktop browser with a GPU is faster.

    python benchmarks/map_browser.py [--points 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _lab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()
    n = args.points
    with tempfile.TemporaryDirectory() as tmp:
        server = _lab.JupyterLab.start(Path(tmp) / "lab")
        pw, context = _lab.launch_browser(Path(tmp) / "profile")
        try:
            lab = _lab.LabSession(server, context, test_name="map_browser")
            page = lab.open_notebook([
                "import numpy as np, dal_widgets as dal\n"
                "from dal_widgets.projection import Projector\n"
                "rng = np.random.default_rng(0)\n"
                f"X = (rng.normal(size=(10, 16))[np.arange({n}) % 10] + rng.normal(size=({n}, 16))).astype(np.float32)\n"
                f"ds = dal.datasets.from_arrays(X, y=np.arange({n}) % 10)\n"
                "s = dal.Session(ds, strategy='random', store=None, device='cpu', retrain='manual')\n"
                "plot = dal.EmbeddingPlot(s, projector=Projector(s, method='pca'))\n"
                "plot",
            ], timeout=300)
            gd = ".js-plotly-plot.dal-map"
            page.locator(gd).wait_for(state="visible", timeout=60_000)
            drawn = page.evaluate(f"document.querySelector('{gd}').data[0].x.length")
            assert drawn == n, drawn
            timings: dict[str, list[float]] = {"zoom": [], "pan": [], "hover (Inspect mode)": [], "label -> colors in browser": []}

            def browser_ms(call: str) -> float:
                return page.evaluate(
                    "async () => { const el = document.querySelector('" + gd + "');"
                    " const t = performance.now(); await " + call + "; return performance.now() - t; }"
                )

            for i in range(5):
                timings["zoom"].append(browser_ms(f"Plotly.relayout(el, {{'xaxis.range': [-{2 + i}, {2 + i}], 'yaxis.range': [-{2 + i}, {2 + i}]}})"))
                timings["pan"].append(browser_ms(f"Plotly.relayout(el, {{'xaxis.range': [-{1 + i}, {3 + i}]}})"))
                before = page.evaluate(f"Array.from(document.querySelector('{gd}').data[0].marker.color).filter(v => v >= 0).length")
                t0 = time.perf_counter()
                lab.execute("ids = s.query(10)\ns.label(ids, ds.targets[ds.positions(ids)])")
                _lab.wait_until(
                    lambda before=before: page.evaluate(
                        f"Array.from(document.querySelector('{gd}').data[0].marker.color).filter(v => v >= 0).length"
                    ) >= before + 10,
                    timeout=60, what="the new colors in the browser")
                timings["label -> colors in browser"].append((time.perf_counter() - t0) * 1000)
            kernel_ms = lab.execute(
                "import time\nids = s.query(10)\nt = time.perf_counter()\n"
                "s.label(ids, ds.targets[ds.positions(ids)])\nprint(round((time.perf_counter() - t) * 1000, 1))"
            ).strip()
            lab.execute("plot.mode.value = 'Inspect'")
            _lab.wait_until(lambda: page.evaluate(f"document.querySelector('{gd}').layout.hovermode") == "closest",
                            timeout=60, what="Inspect mode in the browser")
            for i in range(5):
                timings["hover (Inspect mode)"].append(
                    browser_ms(f"Plotly.Fx.hover(el, [{{curveNumber: 0, pointNumber: {i * 997}}}])"))
            hover_label = page.locator(".hoverlayer .hovertext").count()
            print(f"{n:,} points on the map (Scattergl), headless Chromium, software WebGL:")
            for name, values in timings.items():
                print(f"  {name:28s} median {statistics.median(values):8.1f} ms   max {max(values):8.1f} ms")
            print(f"  kernel side of one label with the map listening: {kernel_ms} ms; hover label shown: {hover_label > 0}")
            print("  (label -> colors includes the test harness's execute round trip and polling)")
            _lab.save_screenshot(page, "map-100k")
            lab.close()
        finally:
            context.close()
            pw.stop()
            server.stop()


if __name__ == "__main__":
    main()
