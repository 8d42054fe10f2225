"""The selection map at the Python level: its state follows the session's events."""

from __future__ import annotations

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.training import TrainConfig
from dal_widgets.widgets.embedding import EmbeddingPlot


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
    assert [it["key"] for it in w.items] == [str(i) for i in ids]
    plot.clear_selection()
    assert plot.selected_ids == [] and plot.label_button.disabled


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
    # drag only once the browser holds the 400 points and the range set above.
    page.wait_for_function(
        "() => { const el = document.querySelector('.js-plotly-plot.dal-map');"
        " return el && el.data && el.data[0].x && el.data[0].x.length === 400"
        " && el._fullLayout.xaxis.range[0] === -8; }",
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
    assert "dark: several classes" in plot.status.value
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
