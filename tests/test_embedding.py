"""The selection map at the Python level: its state follows the session's events."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.training import TrainConfig
from dal_widgets.widgets._figures import NEUTRAL_TEXT, PALETTE
from dal_widgets.widgets.embedding import EmbeddingPlot, Legend

GREY = "#d0d0d0"  # unlabeled (and "nothing to color by yet")


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    X = rng.normal(size=(200, 6)) + y[:, None]
    ds = dal.datasets.from_arrays(X, y=np.array(list("wxyz"))[y], holdout=0.2)
    s = dal.Session(
        ds, store=None, device="cpu", retrain="manual", train_config=TrainConfig(steps=30)
    )
    w = dal.LabelingWidget(s, batch_size=5, prefetch=False)
    plot = EmbeddingPlot(s, labeler=w, map_method="pca")
    yield ds, s, w, plot
    plot.close()
    s.close()


def colors(plot):
    return np.asarray(plot.figure.data[0].marker.color, dtype=float)


def drawn_legend(plot):
    """The (name, color) entries the figure's second legend shows, and its title."""
    entries = [
        (t.name, t.marker.color)
        for t in plot.figure.data[5:]
        if t.showlegend and t.legend == "legend2"
    ]
    return entries, plot.figure.layout.legend2.title.text


def scale_color(marker, value):
    """The color a stepped (categorical) colorscale gives a value: step k covers one value."""
    scale = marker.colorscale
    return scale[2 * round(float(value) - marker.cmin)][1]


def assert_legend_matches_the_points(plot):
    """Every pool point's color (through the pool's colorscale) is a color the legend lists,
    and the figure draws the legend's entries (names escaped, colors as listed)."""
    legend = plot.legend
    colors_listed = {color for _, color in legend.entries}
    marker = plot.figure.data[0].marker
    for value in np.unique(colors(plot)):
        assert scale_color(marker, value) in colors_listed, value
    drawn, _title = drawn_legend(plot)
    assert drawn == [(html.escape(name, quote=False), color) for name, color in legend.entries]


def test_labels_color_points_and_picks_are_marked(setup):
    ds, _s, w, plot = setup
    assert np.all(colors(plot) == -1)  # nothing labeled: all grey
    assert len(plot.figure.data[2].x) == 5  # this round's picks
    sid = w.batch_ids[0]
    w.label("y")
    pos = ds.positions([sid])[0]
    assert colors(plot)[pos] == 2 and (colors(plot) >= 0).sum() == 1
    overlay = plot.figure.data[4]  # the labeled samples, drawn on top
    assert list(overlay.marker.color) == [2] and list(overlay.x) == [
        plot.projector.current().coords[pos, 0]
    ]
    w.undo()
    assert np.all(colors(plot) == -1)
    assert plot.errors == []


def test_color_modes(setup):
    ds, s, _w, plot = setup
    plot.color_by.value = "truth"
    np.testing.assert_array_equal(colors(plot), ds.targets)
    s.label(ds.ids[:40].tolist(), ds.targets[:40])
    s.train(block=True)
    plot.color_by.value = "prediction"
    pred = s.predict_proba().argmax(1)
    np.testing.assert_array_equal(colors(plot), pred)
    s.query(5)
    plot.color_by.value = "score"
    np.testing.assert_allclose(colors(plot), s.last_query.scores, rtol=1e-5)
    assert len(plot.figure.data[1].x) == 50  # top candidates shown
    plot.color_by.value = "round"
    assert (
        np.nanmax(colors(plot)) == 1
    )  # the 40 labels were given in round 1 (after the first query)
    assert plot.errors == []


def test_trained_model_moves_the_map_to_embeddings(setup):
    ds, s, _w, plot = setup
    before = np.asarray(plot.figure.data[0].x).copy()
    s.label(ds.ids[:40].tolist(), ds.targets[:40])
    s.train(block=True)
    plot.projector.wait(30)
    assert plot.projector.current().source == "embeddings"
    assert not np.allclose(np.asarray(plot.figure.data[0].x), before)
    assert "embeddings" in plot.status.value


def test_selection_goes_to_the_labeler(setup):
    ds, _s, w, plot = setup
    ids = plot.select_positions([3, 4, 5])
    assert ids == ds.ids[[3, 4, 5]].tolist() and plot.label_button.description == "Label these (3)"
    assert not plot.label_button.disabled
    plot.label_selection()
    assert sorted(it["key"] for it in w.items) == sorted(str(i) for i in ids)
    plot.clear_selection()
    assert plot.selected_ids == [] and plot.label_button.disabled


def test_a_large_selection_opens_as_pages_grouped_by_suggestion(setup):
    ds, s, w, plot = setup
    s.label(ds.ids[:40].tolist(), ds.targets[:40])
    s.train(block=True)
    with pytest.raises(ValueError, match=r"'positions'.*\[0, 160\).*160"):
        plot.select_positions([3, 160])
    selected = plot.select_positions(np.arange(40, 160))  # 120 unlabeled samples
    order = plot.label_selection()
    assert sorted(order) == sorted(selected)
    assert w.reviewing["pages"] == 24 and len(w.batch_ids) == 5  # pages of one batch
    predicted = s.predict_proba(order).argmax(1)
    assert (np.diff(predicted) >= 0).all()  # grouped by the model's suggestion
    seen = list(w.batch_ids)
    for _ in range(23):
        w.next_page()
        seen += w.batch_ids
    assert seen == order  # every selected sample once, in review order
    accepted = w.accept_page()
    assert len(accepted) == 5 and len(s.labels) == 45
    w.undo()  # one action: one undo
    assert len(s.labels) == 40


def test_round_replay(setup):
    ds, _s, w, plot = setup
    first_picks = w.batch_ids
    for _ in range(5):
        w.label("w")  # round 1 finished: round 2 is shown
    plot.rounds.value = 1
    picks = np.asarray(plot.figure.data[2].x)
    coords = plot.projector.current().coords
    np.testing.assert_allclose(np.sort(picks), np.sort(coords[ds.positions(first_picks), 0]))
    assert "replaying round 1" in plot.status.value
    plot.live.value = True
    assert "live" in plot.status.value


def test_inspect_mode_hover_text_is_escaped():
    texts = dal.datasets.texts(["<b>x</b> one", "two"] * 10, y=["<i>a</i>", "b"] * 10)
    s = dal.Session(texts, store=None, device="cpu", retrain="manual")
    s.label(texts.ids[0], "<i>a</i>")
    plot = EmbeddingPlot(s, map_method="pca")
    plot.mode.value = "Inspect"
    assert plot.figure.layout.hovermode == "closest"
    assert "&lt;i&gt;a&lt;/i&gt;" in plot.figure.data[0].text[0]
    plot.show_sample(texts.ids[0])
    assert plot.errors == []
    s.close()


def test_hover_in_inspect_mode_shows_the_sample_beside_the_map():
    ds = dal.datasets.digits()
    fast = TrainConfig(steps=40)
    s = dal.Session(ds, store=None, device="cpu", retrain="manual", train_config=fast)
    s.label(ds.ids[:30].tolist(), ds.targets[:30])
    s.train(block=True)
    plot = EmbeddingPlot(s, map_method="pca")
    plot.hover([7])
    assert plot.shown is None  # Select mode: hover does nothing (and plotly sends none)
    plot.mode.value = "Inspect"
    plot.hover([7])
    assert plot.shown == ds.ids[7]
    image, caption = plot.panel
    assert image.format == "png" and image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"id {ds.ids[7]}" in caption.value and "predicted" in caption.value
    assert plot.errors == []
    s.close()


@pytest.mark.e2e
def test_box_selection_in_the_browser_reaches_python(lab):
    import json

    from _lab import wait_until

    page = lab.open_notebook(
        [
            "import json, numpy as np\n"
            "import dal_widgets as dal\n"
            "rng = np.random.default_rng(0)\n"
            "X = rng.uniform(0, 10, size=(400, 2))\n"
            "ds = dal.datasets.from_arrays(X, classes=['a', 'b'])\n"
            "s = dal.Session(ds, store=None, device='cpu', retrain='manual')\n"
            "plot = dal.EmbeddingPlot(s, map_method='pca')\n"
            "plot.figure.layout.yaxis.scaleanchor = None\n"
            "plot.figure.layout.xaxis.range = [-8, 8]\n"
            "plot.figure.layout.yaxis.range = [-8, 8]\n"
            "plot",
        ]
    )
    drag = page.locator(".js-plotly-plot.dal-map .nsewdrag").first
    drag.wait_for(state="visible", timeout=20_000)
    # The axes can be drawn before the figure's data and layout arrive (a loaded machine):
    # drag only once the browser holds the 400 points and the range set above, and the figure
    # has taken its column's width (it is drawn at plotly's default 700 px first).
    page.wait_for_function(
        "() => { const el = document.querySelector('.js-plotly-plot.dal-map');"
        " return el && el.data && el.data[0].x && el.data[0].x.length === 400"
        " && el._fullLayout.xaxis.range[0] === -8"
        " && Math.abs(el._fullLayout.width - el.getBoundingClientRect().width) <= 2; }",
        timeout=60_000,
    )
    box = drag.bounding_box()
    # Drag from 20% to 60% of the plot area in x, 30% to 70% in y (screen y grows downwards).
    fx0, fx1, fy0, fy1 = 0.2, 0.6, 0.3, 0.7
    page.mouse.move(box["x"] + fx0 * box["width"], box["y"] + fy0 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.4 * box["width"], box["y"] + 0.5 * box["height"], steps=5)
    page.mouse.move(box["x"] + fx1 * box["width"], box["y"] + fy1 * box["height"], steps=5)
    page.mouse.up()
    wait_until(
        lambda: lab.execute("print(len(plot.selected_ids))").strip() != "0",
        timeout=15,
        what="the selection in Python",
    )
    got = json.loads(lab.execute("print(json.dumps(sorted(plot.selected_ids)))"))
    expected = json.loads(
        lab.execute(
            "c = plot.projector.current().coords\n"
            f"x0, x1 = -8 + 16 * {fx0}, -8 + 16 * {fx1}\n"
            f"y1, y0 = 8 - 16 * {fy0}, 8 - 16 * {fy1}\n"
            "inside = (c[:, 0] >= x0) & (c[:, 0] <= x1) & (c[:, 1] >= y0) & (c[:, 1] <= y1)\n"
            "print(json.dumps(sorted(ds.ids[inside].tolist())))"
        )
    )
    assert len(expected) > 10
    # Points within a pixel of the box edge may fall either way; everything else must match.
    assert len(set(got) ^ set(expected)) <= 2, (len(got), len(expected))
    assert "Label these" in page.locator(".dal-embedding").inner_text()


def _saved_size(tmp_path, rounds):
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(
        cells=[
            new_code_cell(
                "import numpy as np, dal_widgets as dal\n"
                "rng = np.random.default_rng(0)\n"
                "X = (rng.normal(size=(10, 16))[np.arange(100_000) % 10] + rng.normal(size=(100_000, 16))).astype(np.float32)\n"
                "ds = dal.datasets.from_arrays(X, y=np.arange(100_000) % 10)\n"
                "s = dal.Session(ds, strategy='random', store=None, device='cpu', retrain='manual')\n"
                "plot = dal.EmbeddingPlot(s, map_method='pca')\n"
                "plot"
            ),
            new_code_cell(
                f"for r in range({rounds}):\n"
                "    ids = s.query(10)\n"
                "    s.label(ids, ds.targets[ds.positions(ids)])\n"
                "print(len(s.labels), plot.errors)"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True).execute()
    path = tmp_path / f"map{rounds}.ipynb"
    nbformat.write(nb, path)
    assert f"{rounds * 10} []" in nb.cells[1].outputs[0]["text"]
    return path.stat().st_size


@pytest.mark.slow
def test_saved_notebook_with_a_100k_map_does_not_grow_with_rounds(tmp_path, capsys):
    start, after = _saved_size(tmp_path, 0), _saved_size(tmp_path, 20)
    with capsys.disabled():
        print(
            f"\n100,000-point map, saved notebook: {start / 1e6:.1f} MB after 0 rounds, {after / 1e6:.1f} MB after 20"
        )
    assert after - start < 10e6


def test_map_of_multi_label_data_in_every_color_mode():
    from dal_widgets.widgets.embedding import COLOR_MODES

    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 2] > 0.5], 1).astype(np.uint8)
    ds = dal.datasets.from_arrays(X, y=Y, classes=["red", "round", "rare"], holdout=0.2)
    s = dal.Session(
        ds,
        strategy="multilabel_entropy",
        store=None,
        device="cpu",
        retrain="manual",
        train_config=TrainConfig(steps=30),
    )
    plot = EmbeddingPlot(s, map_method="pca")
    one, several, none = ds.ids[:3].tolist()
    s.label([one, several, none], [["round"], ["red", "rare"], []])
    # A sample with one class takes that class's color, one with several the "several" color
    # (value C), one labeled with none of the classes the "none" color (value C + 1).
    values = colors(plot)
    assert values[ds.positions([one, several, none])].tolist() == [1, 3, 4]
    assert (values == -1).sum() == len(ds) - 3
    assert plot.figure.data[0].marker.cmax == 4
    assert list(plot.figure.data[4].marker.color) == [1, 3, 4]  # the labeled overlay
    assert [name for name, _ in plot.legend.entries] == [
        "red",
        "round",
        "rare",
        "several classes",
        "none of the classes",
        "unlabeled",
    ]
    assert_legend_matches_the_points(plot)
    plot.color_by.value = "truth"
    count = ds.targets.sum(1)
    expected = np.where(count == 1, ds.targets.argmax(1), np.where(count > 1, 3, 4))
    np.testing.assert_array_equal(colors(plot), expected)
    ids = ds.ids[3:60].tolist()
    s.label(ids, ds.targets[ds.positions(ids)])
    s.train(block=True)
    s.query(5)
    plot.mode.value = "Inspect"  # hover texts with multi-label predictions
    assert "label red, rare" in plot.figure.data[0].text[ds.positions([several])[0]]
    for mode in COLOR_MODES:
        plot.color_by.value = mode
        assert plot.errors == [], (mode, plot.errors)
        values = colors(plot)
        assert values.shape == (len(ds),)
        if mode in ("labels", "truth", "prediction"):
            assert set(np.unique(values).tolist()) <= {-1, 0, 1, 2, 3, 4}
            assert_legend_matches_the_points(plot)
            names = [name for name, _ in plot.legend.entries]
            assert names[:5] == ["red", "round", "rare", "several classes", "none of the classes"]
            assert ("unlabeled" in names) == (mode == "labels")
        else:
            assert plot.legend.scale is not None, mode
    plot.color_by.value = "prediction"
    hot = s.predict_proba() >= 0.5
    count = hot.sum(1)
    expected = np.where(count == 1, hot.argmax(1), np.where(count > 1, 3, 4))
    np.testing.assert_array_equal(colors(plot), expected)
    plot.show_sample(several)
    assert "red, rare" in plot.panel[1].value
    s.undo()
    assert plot.errors == []
    plot.close()
    s.close()


def test_legend_in_every_color_mode(setup):
    ds, s, _w, plot = setup
    classes = [(c, PALETTE[i]) for i, c in enumerate("wxyz")]

    # labels: one entry per class, and grey for unlabeled samples
    s.label(ds.ids[:3].tolist(), ds.targets[:3])
    assert plot.legend == Legend("labels", "given label", (*classes, ("unlabeled", GREY)))
    assert drawn_legend(plot)[1] == "given label"
    assert not plot.figure.data[0].marker.showscale
    assert_legend_matches_the_points(plot)

    # truth: every point has its class, nothing is grey
    plot.color_by.value = "truth"
    assert plot.legend == Legend("truth", "true class", tuple(classes))
    assert_legend_matches_the_points(plot)
    assert drawn_legend(plot)[1] == "true class"

    # prediction and score before a model: all grey, and the legend says why
    for mode, title in (("prediction", "predicted class"), ("score", "strategy score")):
        plot.color_by.value = mode
        assert plot.legend == Legend(mode, title, (("no model yet", GREY),))
        assert np.all(colors(plot) == -1) and drawn_legend(plot)[0] == [("no model yet", GREY)]

    s.label(ds.ids[3:40].tolist(), ds.targets[3:40])
    s.train(block=True)
    s.query(5)
    plot.color_by.value = "prediction"
    assert plot.legend == Legend("prediction", "predicted class", tuple(classes))
    assert_legend_matches_the_points(plot)

    # score: a color bar titled with the strategy, spanning the scores; no class entries
    plot.color_by.value = "score"
    scores = s.last_query.scores
    legend = plot.legend
    assert legend.title == "entropy score" and legend.note == "higher = asked sooner"
    assert legend.entries == () and legend.colorscale == "Viridis"
    np.testing.assert_allclose(legend.scale, (scores.min(), scores.max()), rtol=1e-5)
    pool = plot.figure.data[0]
    assert pool.marker.showscale and not plot.figure.data[4].marker.showscale
    assert pool.marker.colorbar.title.text == "entropy score<br>(higher = asked sooner)"
    assert (pool.marker.cmin, pool.marker.cmax) == pytest.approx(legend.scale)
    assert drawn_legend(plot)[0] == []  # the class legend is empty

    # round: the labeled samples (drawn on top) carry the rounds and the color bar; the pool
    # stays grey (unlabeled: -1, not NaN, which plotly drew in its dark default color)
    plot.color_by.value = "round"
    assert plot.legend == Legend(
        "round", "round labeled in", (("unlabeled", GREY),), (0.0, 1.0), "Viridis"
    )
    values = colors(plot)
    assert not np.isnan(values).any() and (values == -1).sum() == len(ds) - 40
    pool, labeled = plot.figure.data[0], plot.figure.data[4]
    assert not pool.marker.showscale and {c for _, c in pool.marker.colorscale} == {GREY}
    assert labeled.marker.showscale and labeled.marker.colorscale[0][1] == "#440154"  # Viridis
    assert labeled.marker.colorbar.title.text == "round labeled in"
    assert labeled.marker.colorbar.dtick == 1 and labeled.marker.colorbar.tickformat == "d"
    assert drawn_legend(plot) == ([("unlabeled", GREY)], "")

    # a class added later gets its entry
    plot.color_by.value = "labels"
    s.add_class("new")
    assert plot.legend.entries[4] == ("new", PALETTE[4])
    assert drawn_legend(plot)[0][4] == ("new", PALETTE[4])
    assert plot.errors == []


def test_legend_escapes_class_names_and_shortens_long_ones():
    rng = np.random.default_rng(0)
    names = ["<b>bold</b>", 'say "hi" & go', "x" * 40]
    y = np.array(names)[np.arange(60) % 3]
    ds = dal.datasets.from_arrays(rng.normal(size=(60, 3)), y=y)
    s = dal.Session(ds, store=None, device="cpu", retrain="manual")
    plot = EmbeddingPlot(s, map_method="pca", color_by="truth")
    assert [name for name, _ in plot.legend.entries] == sorted(names)  # kept as given
    drawn = {name for name, _ in drawn_legend(plot)[0]}
    assert "&lt;b&gt;bold&lt;/b&gt;" in drawn
    assert 'say "hi" &amp; go' in drawn  # plotly decodes &amp; but not &quot;
    assert "x" * 27 + "\u2026" in drawn
    assert all("<" not in name for name in drawn)
    plot.close()
    s.close()


def test_map_follows_light_and_dark_themes(setup):
    _ds, _s, _w, plot = setup
    layout = plot.figure.layout
    assert layout.paper_bgcolor == "rgba(0,0,0,0)" and layout.plot_bgcolor == "rgba(0,0,0,0)"
    assert layout.font.color == NEUTRAL_TEXT
    # In JupyterLab the text takes the theme's color: a stylesheet inside the widget.
    import ipywidgets

    (style,) = [
        c for c in plot.widget.children if isinstance(c, ipywidgets.HTML) and "<style>" in c.value
    ]
    assert style.layout.display == "none"
    assert ".dal-map .infolayer text" in style.value
    assert "var(--jp-ui-font-color1" in style.value and "!important" in style.value


CHART_JS = Path(dal.__file__).parent / "widgets" / "chart.js"


def chart_axis(tmp_path, *calls):
    """Run chart.js's ``axis`` under Node (the same module the browser loads)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js to run chart.js")
    module = tmp_path / "chart.mjs"
    module.write_text(CHART_JS.read_text())
    script = (
        f"import {{ axis }} from {json.dumps(module.as_uri())};\n"
        f"console.log(JSON.stringify({json.dumps(list(calls))}.map((a) => axis(...a))));"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_line_chart_ticks_with_one_point_or_equal_x(tmp_path):
    one, equal, ints, floats, fixed, flat_y = chart_axis(
        tmp_path,
        [[10], 5],  # one evaluation after 10 labels
        [[10, 10, 10], 5],
        [[10, 11, 12], 5],
        [[0.25, 0.5], 4],
        [[0.6], 4, [0.0, 1.0]],
        [[0.693, 0.693], 4],
    )
    assert one == {"lo": 9, "hi": 11, "ticks": [10]}  # was 10, 10.2, ... 11
    assert equal == one
    assert ints["ticks"] == [10, 11, 12]  # integers stay integers
    assert floats["ticks"] == [0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    assert fixed == {"lo": 0, "hi": 1, "ticks": [0, 0.2, 0.4, 0.6, 0.8, 1]}
    assert flat_y["ticks"] == [0.693] and flat_y["lo"] < 0.693 < flat_y["hi"]


#: In the page: the map's legend and color bar texts that are not drawn whole inside both the
#: figure's SVG and the map's column; the width plotly draws the figure at, and the widths of
#: its element and of the map's column.
_LEGEND_PLACEMENT_JS = """
() => {
  const fig = document.querySelector('.js-plotly-plot.dal-map');
  const svg = fig.querySelector('.main-svg').getBoundingClientRect();
  const column = fig.closest('.dal-embedding').getBoundingClientRect();
  const texts = [...fig.querySelectorAll('g.legend2 text, g.colorbar text')]
    .filter((t) => t.textContent);
  const outside = texts.filter((t) => {
    const r = t.getBoundingClientRect();
    return r.width === 0 || [svg, column].some((b) => r.left < b.left - 1
      || r.right > b.right + 1 || r.top < b.top - 1 || r.bottom > b.bottom + 1);
  }).map((t) => t.textContent);
  return {figure: fig._fullLayout.width, element: fig.getBoundingClientRect().width,
          column: column.width, texts: texts.length, outside};
}
"""


@pytest.mark.e2e
def test_legend_and_theme_colors_in_the_browser(lab):
    from _lab import wait_until

    page = lab.open_notebook(
        [
            "import numpy as np, ipywidgets as W\n"
            "import dal_widgets as dal\n"
            "rng = np.random.default_rng(0)\n"
            "y = np.array(['<b>a</b>', 'b', 'c'])[np.arange(300) % 3]\n"
            "ds = dal.datasets.from_arrays(rng.normal(size=(300, 4)), y=y)\n"
            "s = dal.Session(ds, store=None, device='cpu', retrain='manual')\n"
            "plot = dal.EmbeddingPlot(s, map_method='pca', color_by='truth')\n"
            "column = W.Box([plot.widget], layout=W.Layout(width='100%'))\n"
            "column",
        ]
    )
    legend = ".js-plotly-plot.dal-map g.legend2 text.legend2text"
    page.wait_for_function(f"() => document.querySelectorAll({legend!r}).length === 3")
    # The class name shows as the text it is (escaped), not as bold markup.
    texts = page.eval_on_selector_all(legend, "els => els.map((e) => e.textContent)")
    assert texts == ["<b>a</b>", "b", "c"]
    assert page.locator(".dal-map g.legend2 .legend2titletext").text_content() == "true class"
    background = page.eval_on_selector(
        ".dal-map .main-svg", "el => getComputedStyle(el).backgroundColor"
    )
    assert background == "rgba(0, 0, 0, 0)"  # the notebook's own background shows
    # The legend's text takes the theme's text color (what a dark theme sets on the page).
    page.evaluate(
        "() => document.documentElement.style.setProperty('--jp-ui-font-color1', 'rgb(1, 2, 3)')"
    )
    fill = page.eval_on_selector(legend, "el => getComputedStyle(el).fill")
    assert fill == "rgb(1, 2, 3)"
    page.evaluate("() => document.documentElement.style.removeProperty('--jp-ui-font-color1')")

    # A narrow column (Notebook 7's App gives the map about 480 px): the figure follows its
    # column's width, and the legend (then the color bar) is drawn inside it. Before, the
    # figure kept plotly's default 700 px and the legend, at its right edge, was cut off.
    def placement():
        return page.evaluate(_LEGEND_PLACEMENT_JS)

    def fits(now, width):  # the column has its width, the figure its element's (no more)
        return (
            abs(now["column"] - width) <= 1
            and now["element"] <= width + 1
            and abs(now["figure"] - now["element"]) <= 2
        )

    for width in (420, 700, 400):
        lab.execute(f"column.layout.width = '{width}px'")
        wait_until(
            lambda w=width: fits(placement(), w),
            timeout=15,
            what=f"the figure to take the width of its {width} px column",
            details=lambda: str(placement()),
        )
        assert placement()["outside"] == [], placement()
        assert all(page.locator(legend).nth(i).is_visible() for i in range(3))
    lab.save_screenshot(page, "map-legend-400px")
    # title and entries: a, b, c and "unlabeled"; "no model yet"
    for mode, count in (("labels", 5), ("score", 2)):
        lab.execute(f"plot.color_by.value = {mode!r}; assert plot.errors == []")
        wait_until(
            lambda c=count: placement()["texts"] == c,
            timeout=15,
            what=f"the legend of color mode {mode!r}",
            details=lambda: str(placement()),
        )
        assert placement()["outside"] == [], (mode, placement())
