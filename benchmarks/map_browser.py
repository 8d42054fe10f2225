"""The selection map with 100,000 points in a real JupyterLab + headless Chromium.

Times, in the browser, how long plotly takes to redraw the map after a zoom and a pan
(Plotly.relayout promises), a real pointer hover until the tooltip shows and until the sample
appears in the panel beside the map (5 of each, median), and the kernel-to-browser
round trip of a color update from Python. Uses the test suite's JupyterLab fixtures
(tests/_lab.py); needs chromium and playwright like the browser tests. Headless Chromium renders
WebGL in software here, so a desktop browser with a GPU is faster.

    python benchmarks/map_browser.py [--points 100000] [--repeat 5] [--quick]

``--quick``: 10,000 points, 3 of each action. Prints the figures and writes
``benchmarks/results/map_browser.json`` with ``map_browser-times.png`` and a screenshot of the
map, ``map_browser-screenshot.png`` (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _harness import Measurement, Report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _lab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--points", type=int, default=None, help="default 100,000 (--quick: 10,000)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--quick", action="store_true", help="10,000 points, 3 of each action")
    args = parser.parse_args()
    n = args.points or (10_000 if args.quick else 100_000)
    repeat = args.repeat or (3 if args.quick else 5)
    report = Report("map_browser", f"Selection map in the browser ({n:,} points)", quick=args.quick)
    problem = _lab.browser_problem()
    if problem:
        raise SystemExit(f"map_browser: {problem}")
    with tempfile.TemporaryDirectory() as tmp:
        server = _lab.JupyterLab.start(Path(tmp) / "lab")
        pw, context = _lab.launch_browser(Path(tmp) / "profile")
        try:
            lab = _lab.LabSession(server, context, test_name="map_browser")
            page = lab.open_notebook(
                [
                    "import numpy as np, dal_widgets as dal\n"
                    "rng = np.random.default_rng(0)\n"
                    f"X = (rng.normal(size=(10, 16))[np.arange({n}) % 10] + rng.normal(size=({n}, 16))).astype(np.float32)\n"
                    f"ds = dal.datasets.from_arrays(X, y=np.arange({n}) % 10)\n"
                    "s = dal.Session(ds, strategy='random', store=None, device='cpu', retrain='manual')\n"
                    "plot = dal.EmbeddingPlot(s, map_method='pca')\n"
                    "plot",
                ],
                timeout=300,
            )
            gd = ".js-plotly-plot.dal-map"
            page.locator(gd).wait_for(state="visible", timeout=60_000)
            drawn = page.evaluate(f"document.querySelector('{gd}').data[0].x.length")
            assert drawn == n, drawn
            timings: dict[str, list[float]] = {
                "zoom": [],
                "pan": [],
                "hover tooltip (Inspect mode)": [],
                "hover -> sample panel (kernel)": [],
                "label -> colors in browser": [],
            }

            def browser_ms(call: str) -> float:
                return page.evaluate(
                    "async () => { const el = document.querySelector('" + gd + "');"
                    " const t = performance.now(); await "
                    + call
                    + "; return performance.now() - t; }"
                )

            colored = (
                f"Array.from(document.querySelector('{gd}').data[0].marker.color)"
                ".filter(v => v >= 0).length"
            )
            for i in range(repeat):
                timings["zoom"].append(
                    browser_ms(
                        f"Plotly.relayout(el, {{'xaxis.range': [-{2 + i}, {2 + i}], 'yaxis.range': [-{2 + i}, {2 + i}]}})"
                    )
                )
                timings["pan"].append(
                    browser_ms(f"Plotly.relayout(el, {{'xaxis.range': [-{1 + i}, {3 + i}]}})")
                )
                before = page.evaluate(colored)
                t0 = time.perf_counter()
                lab.execute("ids = s.query(10)\ns.label(ids, ds.targets[ds.positions(ids)])")
                _lab.wait_until(
                    lambda before=before: page.evaluate(colored) >= before + 10,
                    timeout=60,
                    what="the new colors in the browser",
                )
                timings["label -> colors in browser"].append((time.perf_counter() - t0) * 1000)
            kernel_ms = lab.execute(
                "import time\nids = s.query(10)\nt = time.perf_counter()\n"
                "s.label(ids, ds.targets[ds.positions(ids)])\nprint(round((time.perf_counter() - t) * 1000, 1))"
            ).strip()
            lab.execute("plot.mode.value = 'Inspect'")
            _lab.wait_until(
                lambda: (
                    page.evaluate(f"document.querySelector('{gd}').layout.hovermode") == "closest"
                ),
                timeout=60,
                what="Inspect mode in the browser",
            )
            # A real pointer hover: move the mouse onto a point's pixel, time until plotly draws
            # its tooltip, and until the kernel has put the sample into the panel beside the map.
            page.evaluate(
                f"Plotly.relayout(document.querySelector('{gd}'), "
                "{'xaxis.autorange': true, 'yaxis.autorange': true})"
            )
            panel = ".dal-map-detail"
            point_xy = (
                "(i) => { const el = document.querySelector('" + gd + "');"
                " const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis;"
                " const r = el.querySelector('.nsewdrag').getBoundingClientRect();"
                " return [r.left + xa.l2p(el.data[0].x[i]), r.top + ya.l2p(el.data[0].y[i])]; }"
            )
            for i in range(repeat):
                page.mouse.move(5, 5)  # off the plot: the previous tooltip goes away
                page.wait_for_selector(".hoverlayer .hovertext", state="detached", timeout=10_000)
                before = page.locator(panel).inner_text()
                x, y = page.evaluate(point_xy, (i * 997) % n)
                t0 = time.perf_counter()
                page.mouse.move(x, y)
                page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
                timings["hover tooltip (Inspect mode)"].append((time.perf_counter() - t0) * 1000)
                _lab.wait_until(
                    lambda before=before: (
                        page.locator(panel).inner_text() != before
                        and "id " in page.locator(panel).inner_text()
                    ),
                    timeout=30,
                    what="the hovered sample in the panel beside the map",
                )
                timings["hover -> sample panel (kernel)"].append((time.perf_counter() - t0) * 1000)
            hover_label = page.locator(".hoverlayer .hovertext").count()
            measured = {name: Measurement.from_times(values) for name, values in timings.items()}
            print(f"{n:,} points on the map (Scattergl), headless Chromium, software WebGL:")
            for name, m in measured.items():
                print(f"  {name:28s} median {m.median:8.1f} ms   max {m.max:8.1f} ms")
            print(
                f"  kernel side of one label with the map listening: {kernel_ms} ms; hover label "
                f"shown: {hover_label > 0}"
            )
            print("  (label -> colors includes the test harness's execute round trip and polling)")
            _lab.save_screenshot(page, "map-100k")
            report.results.mkdir(parents=True, exist_ok=True)
            shot = report.results / "map_browser-screenshot.png"
            page.locator(gd).screenshot(path=str(shot))
            report.add_file(
                shot,
                f"The map with {n:,} points in JupyterLab, headless Chromium, after the runs "
                "(Inspect mode, one point hovered).",
            )
            lab.close()
        finally:
            context.close()
            pw.stop()
            server.stop()

    report.table(
        f"{n:,} points on the map (Scattergl), headless Chromium, software WebGL "
        f"({repeat} of each action)",
        ["action", "median ms", "max ms"],
        [[name, f"{m.median:.1f}", f"{m.max:.1f}"] for name, m in measured.items()],
    )
    report.table(
        "Kernel side",
        ["measure", "value"],
        [
            ["one label with the map listening (kernel, ms)", kernel_ms],
            ["hover label shown", "yes" if hover_label > 0 else "NO"],
        ],
    )
    report.note(
        "zoom/pan: Plotly.relayout promises timed in the page. hover: a real pointer move onto a "
        "point (Playwright), timed until plotly's tooltip is in the DOM, and until the kernel's "
        "on_hover callback has put the sample into the panel beside the map (polled, so within "
        "~50 ms). label -> colors includes the test harness's execute round trip and polling."
    )
    report.note(
        "headless Chromium renders WebGL in software here; a desktop browser with a GPU is faster."
    )
    if args.quick:
        report.note(f"--quick: {n:,} points, {repeat} of each action.")
    report.data.update(points=n, ms={k: m for k, m in measured.items()}, kernel_label_ms=kernel_ms)

    fig, ax = report.subplots(figsize=(7, 3))
    names = list(measured)[::-1]
    medians = [measured[k].median for k in names]
    ax.barh(names, medians, color="tab:blue", label="median")
    ax.scatter(
        [measured[k].max for k in names], names, color="black", marker="|", s=200, label="max"
    )
    for y, v in enumerate(medians):
        ax.text(v, y, f" {v:.1f} ms" if v < 10 else f" {v:.0f} ms", va="center", fontsize=8)
    ax.set_xlabel("ms")
    ax.set_title(f"Map with {n:,} points: browser time per action", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    report.figure(
        fig,
        "times",
        f"Milliseconds per map action with {n:,} points in headless Chromium (median; "
        "black tick: max).",
    )
    report.save()


if __name__ == "__main__":
    main()
