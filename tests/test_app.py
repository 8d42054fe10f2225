"""The App at the Python level: its parts are linked and every control has a method."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time

import numpy as np
import pytest
import torch

import dal_widgets as dal
from dal_widgets.training import TrainConfig


@pytest.fixture
def app(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(240) % 3
    X = rng.normal(size=(240, 5)) * 0.5 + y[:, None]
    ds = dal.datasets.from_arrays(X, y=np.array(["a", "b", "c"])[y], holdout=0.25)
    s = dal.Session(
        ds, store=str(tmp_path / "app.db"), device="cpu", train_config=TrainConfig(steps=40)
    )
    a = dal.App(s, batch_size=6, budget=60, map_method="pca")
    yield a
    a.close()
    s.close()


def label_batch(app):
    lab = app.labeler
    ds = app.session.dataset
    for _ in range(len(lab.items)):
        sid = lab.current_id
        lab.label(int(ds.targets[ds.positions([sid])[0]]))


def test_labeling_a_batch_trains_evaluates_and_updates_every_part(app):
    label_batch(app)
    assert app.session.wait(60)
    app.map.projector.wait(30)
    assert app.errors == [] and app.map.errors == [] and app.labeler.errors == []
    (curve,) = app.curve_chart.series
    assert curve["x"] == [6.0] and 0.0 <= curve["y"][0] <= 1.0
    assert app.loss_chart.series and len(app.loss_chart.series[0]["x"]) >= 1
    # the first model may come early, after 5 labels; the newest saw all 6
    assert re.search(r"model v\d \(6 labels", app.status.value)
    assert "worker: idle" in app.status.value and app.labeler.progress["worker"] == "idle"
    colored = np.asarray(app.map.figure.data[0].marker.color) >= 0
    assert colored.sum() == 6  # the labels show on the map


def test_map_marks_the_labelers_sample(app):
    lab = app.labeler
    coords = app.map.projector.current().coords
    for _ in range(2):
        sid = lab.current_id
        pos = app.session.dataset.positions([sid])[0]
        assert list(app.map.figure.data[3].x) == [coords[pos, 0]]
        lab.move(1)


def test_map_selection_fills_the_labeler(app):
    ids = app.map.select_positions([10, 11, 12])
    assert sorted(app.map.label_selection()) == sorted(ids)
    assert sorted(app.labeler.batch_ids) == sorted(ids)  # one page: a batch holds 6


def test_controls(app, tmp_path):
    app.set_strategy("margin")
    assert app.session.strategy == "margin" and app.strategy.value == "margin"
    assert "margin" in app.strategy_help.value.lower()
    app.strategy.value = "least_confidence"  # the dropdown drives the session too
    assert app.session.strategy == "least_confidence"
    app.set_batch_size(4)
    assert app.labeler.batch_size == 4
    app.set_retrain("manual")
    assert app.session.retrain == "manual"
    label_batch(app)
    assert not app.session.training  # manual: nothing started
    app.fit_all()
    assert app.session.wait(60) and app.session.model_version.n_labels == 6
    out = app.export_labels(tmp_path / "labels.csv")
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 6 and {
        "sample_id",
        "label",
        "round",
        "source",
        "annotator",
        "timestamp",
    } == set(rows[0])
    out = app.export_model(tmp_path / "model.pt")
    payload = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    assert json.loads(payload["config_json"])["n_labels"] == 6
    assert "model.pt" in app.notice.value


def test_errors_show_in_the_app_and_escape_html(tmp_path):
    def failing_model(shape, n_classes):
        raise RuntimeError("<b>boom</b> <script>x</script>")

    ds = dal.datasets.digits()
    s = dal.Session(ds, model=failing_model, store=None, device="cpu", retrain="manual")
    app = dal.App(s, batch_size=4, map_method="pca", export_dir=tmp_path)
    s.label(ds.ids[:3].tolist(), 0)
    app.fit_button.click()  # the fit fails in the worker; the App shows it
    assert s.wait(30) and s.train_error is not None
    assert "&lt;b&gt;boom&lt;/b&gt;" in app.error_box.value
    assert "<script>" not in app.error_box.value and "<b>" not in app.error_box.value
    app.close()


def test_export_model_without_model_is_an_error(app):
    app.export_model_button.click()  # the button's error is shown, not raised
    assert "No trained model yet" in app.error_box.value


def test_bad_session():
    with pytest.raises(TypeError, match="'session'"):
        dal.App(object())


@pytest.mark.e2e
def test_app_renders_at_1280_without_overlaps_and_trains_while_idle(lab):
    from _lab import wait_until

    page = lab.open_notebook(
        [
            "import dal_widgets as dal\n"
            "from dal_widgets.training import TrainConfig\n"
            "ds = dal.datasets.digits()\n"
            "s = dal.Session(ds, strategy='margin', store='app.db', device='cpu', train_config=TrainConfig(steps=3000, batch_size=16))\n"
            "app = dal.App(s, batch_size=10, budget=100, map_method='pca')\n"
            "app",
        ]
    )
    page.set_viewport_size({"width": 1280, "height": 800})
    parts = {
        "labeler": page.locator(".dal-app .dal-labeler"),
        "map": page.locator(".dal-app .js-plotly-plot.dal-map"),
        "charts": page.locator(".dal-app .dal-chart"),
    }
    for loc in parts.values():
        loc.first.wait_for(state="visible", timeout=20_000)
    boxes = [
        parts["labeler"].bounding_box(),
        parts["map"].bounding_box(),
        parts["charts"].nth(0).bounding_box(),
        parts["charts"].nth(1).bounding_box(),
    ]
    app_box = page.locator(".dal-app").bounding_box()

    def overlap(a, b):
        return not (
            a["x"] + a["width"] <= b["x"] + 1
            or b["x"] + b["width"] <= a["x"] + 1
            or a["y"] + a["height"] <= b["y"] + 1
            or b["y"] + b["height"] <= a["y"] + 1
        )

    for i in range(len(boxes)):
        assert (
            boxes[i]["width"] > 250
            and boxes[i]["x"] + boxes[i]["width"] <= app_box["x"] + app_box["width"] + 1
        )
        for j in range(i + 1, len(boxes)):
            assert not overlap(boxes[i], boxes[j]), (i, j, boxes[i], boxes[j])

    # The map's pool trace keeps all its points in the browser after the linked updates.
    n_drawn = page.evaluate(
        "document.querySelector('.dal-app .js-plotly-plot.dal-map').data[0].x.length"
    )
    assert n_drawn == 1438

    # Training progress reaches the browser while no cell runs.
    lab.execute(
        "s.label(list(app.labeler.batch_ids), [int(t) for t in ds.targets[ds.positions(app.labeler.batch_ids)]])"
    )
    loss_points = page.locator(".dal-app .dal-chart").nth(0).locator("polyline")

    def points():
        if loss_points.count() == 0:
            return 0
        return len((loss_points.first.get_attribute("points") or "").split())

    wait_until(lambda: points() >= 3, timeout=60, what="loss points from the training thread")
    first = points()
    wait_until(
        lambda: points() > first, timeout=60, what="more loss points while the kernel is idle"
    )
    assert "Idle" in page.locator("#jp-main-statusbar").inner_text()
    lab.save_screenshot(page, "app-1280x800")
    # The same App at 1920 px: still nothing overlapping, nothing past the App's right edge.
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_timeout(500)
    wide = [
        parts["labeler"].bounding_box(),
        parts["map"].bounding_box(),
        parts["charts"].nth(0).bounding_box(),
        parts["charts"].nth(1).bounding_box(),
    ]
    app_box = page.locator(".dal-app").bounding_box()
    for i in range(len(wide)):
        assert wide[i]["x"] + wide[i]["width"] <= app_box["x"] + app_box["width"] + 1
        for j in range(i + 1, len(wide)):
            assert not overlap(wide[i], wide[j]), (i, j, wide[i], wide[j])
    lab.save_screenshot(page, "app-1920x1080")
    lab.execute("s.stop(); s.wait()")


_FOLLOW_CELLS = [
    "import dal_widgets as dal\n"
    "ds = dal.datasets.digits()\n"
    "s = dal.Session(ds, strategy='margin', store='follow.db', device='cpu',\n"
    "                train_config=dal.TrainConfig(steps=200))\n"
    "app = dal.App(s, batch_size=10, map_method='pca')\n"
    "app",
]

_HEADER_AND_PANEL_JS = """() => {
  const header = document.querySelector('.dal-app .dal-progress-text');
  const panel = [...document.querySelectorAll('.dal-app .widget-html-content')]
    .map((e) => e.textContent).find((t) => t.includes('worker:'));
  return [header ? header.textContent : null, panel || null];
}"""


def _agree(page):
    """The labeler's header and the App's panel say the same about the worker. They are two
    widgets, so the browser gets their updates as two messages: allow them 1 s to meet."""
    deadline = time.monotonic() + 1.0
    while True:
        header, panel = page.evaluate(_HEADER_AND_PANEL_JS)
        assert header is not None and panel is not None
        if ("training\u2026" in header) == ("worker: training" in panel):
            return header, panel
        assert time.monotonic() < deadline, f"header {header!r} and panel {panel!r} disagree"
        page.wait_for_timeout(50)


@pytest.mark.e2e
@pytest.mark.parametrize("frontend", ["lab", "nb7"])
def test_suggestions_follow_the_model_and_come_back_after_a_restart(request, frontend):
    from _lab import wait_until

    lab = request.getfixturevalue(frontend)  # JupyterLab 4 or Notebook 7
    for leftover in lab.root_dir.glob("follow.db*"):  # the store, its -wal/-shm, its .dal/
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    page = lab.open_notebook(_FOLLOW_CELLS, name="follow.ipynb")
    page.set_viewport_size({"width": 1280, "height": 900})
    truths = lab.execute(
        "print(*[ds.classes[ds.targets[ds.positions([i])[0]]] for i in app.labeler.batch_ids])"
    ).split()
    assert len(truths) == 10
    labeler = page.locator(".dal-app .dal-labeler")
    labeler.locator(".dal-hint").click()
    # Six labels by keyboard: the first model is fitted from five labels of two classes on.
    for key in truths[:6]:
        page.keyboard.press(key)
        page.wait_for_timeout(120)
        _agree(page)
    wait_until(lambda: "model v" in _agree(page)[0], timeout=60, what="model v1 in the header")
    seen = time.monotonic()
    suggested = labeler.locator(".dal-tile[data-status='pending'] .dal-badge.dal-suggest")
    wait_until(
        lambda: suggested.count() == 4, timeout=2, interval=0.05, what="suggestions on 4 tiles"
    )
    assert time.monotonic() - seen < 2
    for key in truths[6:10]:  # the batch ends: the next batch comes, a fit runs
        page.keyboard.press(key)
        page.wait_for_timeout(120)
        _agree(page)
    # The batch's own fit may start just after the early one ends: wait for the last fit.
    wait_until(
        lambda: (
            lab.execute("print(s.training, s.model_version.n_labels)").split() == ["False", "10"]
        ),
        timeout=60,
        what="the fit on all 10 labels to end",
    )
    wait_until(lambda: "worker: idle" in _agree(page)[1], timeout=10, what="the panel: idle")
    assert "training\u2026" not in _agree(page)[0]
    assert lab.execute("print(len(s.labels), s.model_version.n_labels)").split() == ["10", "10"]
    lab.save_screenshot(page, f"follow-{frontend}-1280x900")

    # A new kernel (the old one shut down) runs the notebook again: the model is back at once.
    lab.server.shutdown_kernels()
    page.close()
    again = lab.open_notebook(_FOLLOW_CELLS, name="follow.ipynb")
    again.set_viewport_size({"width": 1280, "height": 900})
    state = lab.execute("print(len(s.labels), s.model_version.n_labels, s.training)").split()
    assert state == ["10", "10", "False"]  # the saved model, no refit needed
    pending = again.locator(".dal-app .dal-tile[data-status='pending']")
    assert pending.count() == 10
    wait_until(
        lambda: again.locator(".dal-app .dal-tile .dal-badge.dal-suggest").count() == 10,
        timeout=5,
        what="suggestions on the resumed batch without a key press",
    )
    _agree(again)
    lab.save_screenshot(again, f"follow-after-restart-{frontend}-1280x900")


def test_review_menu_opens_reviews_and_errors_clear(app):
    label_batch(app)
    assert app.session.wait(60)
    first = next(i for i in app.session.dataset.ids.tolist() if i not in app.session.labels)
    app.session.skip(first)
    app.review_menu.value = ("skipped", None)
    assert app.labeler.reviewing is not None and app.labeler.batch_ids == [first]
    assert app.review_menu.value == "" and app.review_menu.label == "choose…"
    app.review_menu.value = ("flagged", None)  # nothing flagged: the error shows
    assert "flagged" in app.error_box.value and "ValueError" in app.error_box.value
    cls = app.session.labels[next(iter(app.session.labels))]
    ids = app.review("labels", cls)
    assert ids and all(app.session.labels[i] == cls for i in ids)
    app.review_menu.value = ("labels", cls)  # the next action that works clears the error
    assert app.error_box.value == ""
    with pytest.raises(ValueError, match="'what'"):
        app.review("everything")
    app.labeler.end_review()
    assert app.labeler.reviewing is None


_REVIEW_CELLS = [
    "import dal_widgets as dal\n"
    "ds = dal.datasets.digits()\n"
    "s = dal.Session(ds, strategy='margin', store=None, device='cpu', retrain='manual',\n"
    "                train_config=dal.TrainConfig(steps=200))\n"
    "first = ds.ids[:30].tolist()\n"
    "s.label(first, [ds.classes[t] for t in ds.targets[ds.positions(first)]])\n"
    "s.train(block=True)\n"
    "app = dal.App(s, batch_size=10, map_method='pca')\n"
    "app",
]


@pytest.mark.e2e
@pytest.mark.parametrize("frontend", ["lab", "nb7"])
def test_a_box_selection_opens_as_pages_and_accept_page_is_one_undoable_action(request, frontend):
    from _lab import wait_until

    lab = request.getfixturevalue(frontend)
    page = lab.open_notebook(_REVIEW_CELLS)
    page.set_viewport_size({"width": 1920, "height": 1080})
    plot = page.locator(".dal-app .js-plotly-plot.dal-map")
    drag = plot.locator(".nsewdrag").first
    drag.wait_for(state="visible", timeout=20_000)
    page.wait_for_function(  # the points are there and the figure has its column's width
        "() => { const el = document.querySelector('.dal-app .js-plotly-plot.dal-map');"
        " return el && el.data && el.data[0].x && el.data[0].x.length === 1438"
        " && Math.abs(el._fullLayout.width - el.getBoundingClientRect().width) <= 2; }",
        timeout=60_000,
    )
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    # From below the top legend to the lower right: most of the 1,438 points.
    page.mouse.move(box["x"] + 0.05 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"], steps=5)
    page.mouse.move(box["x"] + 0.95 * box["width"], box["y"] + 0.97 * box["height"], steps=5)
    page.mouse.up()
    wait_until(
        lambda: int(lab.execute("print(len(app.map.selected_ids))")) >= 100,
        timeout=15,
        what="a selection of 100+ points in Python",
    )
    page.locator(".dal-app button", has_text="Label these").click()
    wait_until(
        lambda: "page 1/" in page.locator(".dal-app .dal-labeler").inner_text(),
        timeout=15,
        what="the selection as pages in the labeler",
    )
    pages = lab.execute("print(app.labeler.reviewing['pages'], len(app.labeler.batch_ids))")
    n_pages, on_page = map(int, pages.split())
    assert n_pages >= 10 and on_page == 10
    # The labeler took the keyboard: Shift+Enter accepts the page's suggestions, one action.
    page.wait_for_function(
        "() => document.querySelector('.dal-app .dal-labeler').contains(document.activeElement)"
    )
    page.keyboard.press("Shift+Enter")
    wait_until(
        lambda: lab.execute("print(len(s.labels))").strip() == "40",
        timeout=15,
        what="10 accepted labels",
    )
    newest = lab.execute(
        "h = s.store.history()\n"
        "print(sum(r['action_id'] == h[-1]['action_id'] for r in h), h[-1]['source'])"
    )
    assert newest.split() == ["10", "suggestion"]  # the page went in as one action
    lab.save_screenshot(page, f"review-accepted-{frontend}-1920x1080")
    page.keyboard.press("Backspace")
    wait_until(
        lambda: lab.execute("print(len(s.labels))").strip() == "30",
        timeout=15,
        what="one Backspace to undo the whole page",
    )
    # A legend in every colour mode: class entries, or a colour bar for numbers.
    for mode in ["labels", "truth", "prediction", "score", "round"]:
        lab.execute(f"app.map.color_by.value = {mode!r}")
        page.wait_for_function(
            "() => { const el = document.querySelector('.dal-app .js-plotly-plot.dal-map');"
            " return el.querySelectorAll('g.legend2 text.legend2text').length > 0"
            " || el.querySelectorAll('.colorbar').length > 0; }",
            timeout=15_000,
        )


def test_the_stopping_panel_follows_the_fits(app):
    assert "When to stop" in app.stopping.value and "keep labeling" in app.stopping.value
    label_batch(app)
    assert app.session.wait(60)
    for _ in range(3):  # the same labels again: the model stops changing
        app.session.train(block=True)
    assert app.stop_monitor.signals().stable
    assert "predictions stable" in app.stopping.value and "you could stop" in app.stopping.value


# ---------------------------------------------------------------- an encoder (issue 15)
def _pixels_session(path):
    ds = dal.datasets.digits()
    enc = dal.encoders.from_callable(lambda x: x.reshape(len(x), -1), name="pixels")
    return dal.Session(ds, strategy="margin", store=str(path), device="cpu", encoder=enc)


def test_the_app_shows_the_encoder_and_learns_from_each_label(tmp_path):
    s = _pixels_session(tmp_path / "enc.db")
    a = dal.App(s, batch_size=8, map_method="pca")
    assert s.inputs.wait(60)
    wait = time.monotonic() + 10
    while "encoder pixels: ready" not in a.status.value and time.monotonic() < wait:
        time.sleep(0.05)
    assert "encoder pixels: ready" in a.status.value
    assert a.retrain.value == "label"  # a head learns from each label by default
    ds = s.dataset
    versions = []
    for _ in range(8):
        sid = a.labeler.current_id
        a.labeler.label(int(ds.targets[ds.positions([sid])[0]]))
        assert s.wait(30)
        versions.append(None if s.model_version is None else s.model_version.version)
    first = next(i for i, v in enumerate(versions) if v is not None)
    assert first <= 5 and versions[first:] == list(range(1, 9 - first)), versions
    assert a.errors == [] and a.labeler.errors == []
    a.close()
    s.close()


_ENCODER_CELLS = [
    "import dal_widgets as dal\n"
    "ds = dal.datasets.digits()\n"
    "enc = dal.encoders.from_callable(lambda x: x.reshape(len(x), -1), name='pixels')\n"
    "s = dal.Session(ds, strategy='margin', store='enc.db', device='cpu', encoder=enc)\n"
    "app = dal.App(s, batch_size=10, map_method='pca')\n"
    "app",
]


@pytest.mark.e2e
def test_with_an_encoder_the_model_advances_after_each_label_in_the_browser(lab):
    from _lab import wait_until

    for leftover in lab.root_dir.glob("enc.db*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    page = lab.open_notebook(_ENCODER_CELLS, name="encoder.ipynb")
    page.set_viewport_size({"width": 1280, "height": 900})
    truths = lab.execute(
        "print(*[ds.classes[ds.targets[ds.positions([i])[0]]] for i in app.labeler.batch_ids])"
    ).split()
    header = page.locator(".dal-app .dal-progress-text")
    panel = page.locator(".dal-app .widget-html-content", has_text="worker:")
    wait_until(lambda: "encoder pixels: ready" in panel.inner_text(), timeout=30, what="encoder")
    page.locator(".dal-app .dal-labeler .dal-hint").click()
    state = "print(len(s.labels), s.training, *(s.model_version.n_labels, s.model_version.version) if s.model_version else ())"
    seen = []
    for n, key in enumerate(truths[:10], start=1):
        page.keyboard.press(key)

        def settled(n=n):  # the label is stored and no fit runs or waits
            now = lab.execute(state).split()
            return now[:2] == [str(n), "False"] and (len(now) == 2 or now[2] == str(n))

        wait_until(settled, timeout=30, what=f"the fit after label {n}")
        now = lab.execute(state).split()
        if len(now) == 4:  # a model exists: the header shows the one that saw this label
            wait_until(
                lambda v=now[3]: f"model v{v}" in header.inner_text(),
                timeout=5,
                what=f"model v{now[3]} in the labeler's header",
            )
            seen.append(int(now[3]))
    assert len(seen) >= 5 and seen == list(range(seen[0], seen[0] + len(seen))), seen
    lab.save_screenshot(page, "encoder-app-1280x900")


# ---------------------------------------------------------------- a self-supervised encoder
def test_the_app_labels_while_the_encoder_pretrains_then_shows_the_switch(tmp_path):
    ds = dal.datasets.digits()
    enc = dal.encoders.self_supervised(
        ds, epochs=40, width=8, batch_size=128, cache_dir=tmp_path / "pre"
    )
    s = dal.Session(ds, strategy="auto", store=str(tmp_path / "ssl.db"), device="cpu", encoder=enc)
    a = dal.App(s, batch_size=8, map_method="pca")
    wait = time.monotonic() + 30
    while "pretraining simclr: epoch" not in a.status.value and time.monotonic() < wait:
        time.sleep(0.02)
    assert re.search(r"encoder simclr: pretraining simclr: epoch \d+/40", a.status.value)
    assert "pretraining simclr: epoch" in (a.labeler.progress["encoder_note"] or "")
    for _ in range(4):  # labels go in while it pretrains; the raw model learns from them
        sid = a.labeler.current_id
        a.labeler.label(int(ds.targets[ds.positions([sid])[0]]))
    assert s.inputs.wait(120) and s.wait(60)
    wait = time.monotonic() + 10
    while "the model switched to it" not in a.status.value and time.monotonic() < wait:
        time.sleep(0.05)
    assert "encoder simclr: ready (pretrained on the pool in" in a.status.value
    # The head over an encoder learned on the pool: label spreading and its vote by default.
    assert len(s.labels) == 4 and type(s.model).__name__ == "SpreadVote"
    assert type(s.model.model).__name__ == "EmbeddingHead"
    assert a.errors == [] and a.labeler.errors == []
    a.close()
    s.close()


_SSL_CELLS = [
    "import dal_widgets as dal\n"
    "ds = dal.datasets.digits()\n"
    "enc = dal.encoders.self_supervised(ds, epochs=400, width=8, cache_dir='ssl-cache')\n"
    "s = dal.Session(ds, strategy='auto', store='ssl.db', device='cpu', encoder=enc)\n"
    "app = dal.App(s, batch_size=10, map_method='pca')\n"
    "app",
]


@pytest.mark.e2e
def test_the_app_shows_pretraining_then_the_switch_in_the_browser(lab):
    from _lab import wait_until

    for leftover in [*lab.root_dir.glob("ssl.db*"), lab.root_dir / "ssl-cache"]:
        if leftover.exists():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    page = lab.open_notebook(_SSL_CELLS, name="ssl.ipynb")
    page.set_viewport_size({"width": 1280, "height": 900})
    panel = page.locator(".dal-app .widget-html-content", has_text="worker:")
    header = page.locator(".dal-app .dal-progress-text")
    wait_until(
        lambda: "pretraining simclr: epoch" in panel.inner_text(), timeout=60, what="pretraining"
    )
    wait_until(  # the labeler's header too, where the person labeling looks
        lambda: "pretraining simclr: epoch" in header.inner_text(), timeout=10, what="header"
    )
    lab.save_screenshot(page, "ssl-app-pretraining-1280x900")
    truths = lab.execute(
        "print(*[ds.classes[ds.targets[ds.positions([i])[0]]] for i in app.labeler.batch_ids])"
    ).split()
    page.locator(".dal-app .dal-labeler .dal-hint").click()
    for key in truths[:5]:  # labeling by keyboard goes on while it pretrains
        page.keyboard.press(key)
    wait_until(lambda: lab.execute("print(len(s.labels))").strip() == "5", timeout=30, what="5 labels")
    wait_until(
        lambda: "the model switched to it" in panel.inner_text(), timeout=180, what="the switch"
    )
    state = (
        "print(len(s.labels), type(s.model).__name__ if s.model else None, "
        "type(getattr(s.model, 'model', None)).__name__)"
    )
    wait_until(  # the head, with label spreading's vote (an encoder learned on the pool)
        lambda: lab.execute(state).strip() == "5 SpreadVote EmbeddingHead",
        timeout=30,
        what="the head",
        details=lambda: lab.execute(
            state + "; print(s.train_error, s.inputs.progress, s.store.rounds()[-1])"
        ),
    )
    wait_until(lambda: "pretraining" not in header.inner_text(), timeout=10, what="header")
    lab.save_screenshot(page, "ssl-app-switched-1280x900")
