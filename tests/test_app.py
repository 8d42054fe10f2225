"""The App at the Python level: its parts are linked and every control has a method."""

from __future__ import annotations

import csv

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
    s = dal.Session(ds, store=str(tmp_path / "app.db"), device="cpu", train_config=TrainConfig(steps=40))
    a = dal.App(s, batch_size=6, budget=60, map_method="pca")
    yield a
    a.close()
    s.close()


def label_batch(app):
    lab = app.labeler
    ds = app.session.dataset
    for _ in range(len(lab.items)):
        sid = lab._keys[lab.items[lab.cursor]["key"]]
        lab.label(int(ds.targets[ds.positions([sid])[0]]))


def test_labeling_a_batch_trains_evaluates_and_updates_every_part(app):
    label_batch(app)
    assert app.session.wait(60)
    app.map.projector.wait(30)
    assert app.errors == [] and app.map.errors == [] and app.labeler.errors == []
    (curve,) = app.curve_chart.series
    assert curve["x"] == [6.0] and 0.0 <= curve["y"][0] <= 1.0
    assert app.loss_chart.series and len(app.loss_chart.series[0]["x"]) >= 1
    assert "model v1 (6 labels" in app.status.value and "worker: idle" in app.status.value
    colored = np.asarray(app.map.figure.data[0].marker.color) >= 0
    assert colored.sum() == 6  # the labels show on the map


def test_map_marks_the_labelers_sample(app):
    lab = app.labeler
    coords = app.map.projector.current().coords
    for _ in range(2):
        sid = lab._keys[lab.items[lab.cursor]["key"]]
        pos = app.session.dataset.positions([sid])[0]
        assert list(app.map.figure.data[3].x) == [coords[pos, 0]]
        lab.move(1)


def test_map_selection_fills_the_labeler(app):
    ids = app.map.select_positions([10, 11, 12])
    app.map.label_selection()
    assert [app.labeler._keys[it["key"]] for it in app.labeler.items] == ids


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
    assert len(rows) == 6 and {"sample_id", "label", "round", "source", "annotator", "timestamp"} == set(rows[0])
    weights, config = app.export_model(tmp_path / "model.pt")
    state = torch.load(weights, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert '"n_labels": 6' in open(config).read()
    assert "model.pt" in app.notice.value


def test_errors_show_in_the_app_and_escape_html(app):
    app._safe(lambda: app.session.label([app.session.dataset.ids[0]], "<script>x</script>"))
    assert "&lt;script&gt;" in app.error_box.value and "<script>" not in app.error_box.value
    app._on_failed("Traceback ...\nRuntimeError: <b>boom</b>")
    assert "&lt;b&gt;boom&lt;/b&gt;" in app.error_box.value


def test_export_model_without_model_is_an_error(app):
    app._safe(app.export_model)
    assert "No trained model yet" in app.error_box.value


def test_bad_session():
    with pytest.raises(TypeError, match="'session'"):
        dal.App(object())
