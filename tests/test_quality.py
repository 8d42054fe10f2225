"""The quality panel: progress, labels per class, per-class held-out accuracy and confusion."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.training import TrainConfig
from dal_widgets.widgets.quality import QualityPanel, quality_html

FAST = TrainConfig(steps=40, batch_size=32)
HOSTILE = "<img src=x onerror=alert(1)>"


def blobs(classes=("a", "b", "c"), n=240, holdout=0.25):
    rng = np.random.default_rng(0)
    k = len(classes)
    y = np.arange(n) % k
    X = rng.normal(scale=0.5, size=(n, 2)) + np.stack([y, y % 2 * 3], 1)
    return dal.datasets.from_arrays(X, y=np.array(classes, dtype=object)[y], holdout=holdout)


@pytest.fixture
def session():
    s = dal.Session(blobs(), store=None, device="cpu", train_config=FAST, retrain="manual")
    yield s
    s.close()


def counts_in(text):
    """class name -> label count, read back from the counts table."""
    table = re.search(r"<table class='dal-quality-counts'.*?</table>", text, re.S).group(0)
    rows = re.findall(r"<tr><td[^>]*title='([^']*)'>[^<]*</td><td[^>]*>(\d+)</td>", table)
    return {name: int(n) for name, n in rows}


def test_counts_match_the_labels_given(session):
    ds = session.dataset
    ids = ds.ids[:7].tolist()
    session.label(ids[:4], "a")
    session.label(ids[4:], ["c", "c", "a"])
    text = quality_html(session)
    assert counts_in(text) == {"a": 5, "b": 0, "c": 2}
    assert "<b>7 / 180</b> of the pool labeled" in text and "no budget set" in text


def test_budget_and_no_budget_texts(session):
    session.label(session.dataset.ids[:5].tolist(), "b")
    with_budget = quality_html(session, budget=20)
    assert "<b>5 / 20</b> labeled of the budget (25%, 15 to go)" in with_budget
    assert "width:25.0%" in with_budget
    assert "no budget" not in with_budget
    assert "budget reached" in quality_html(session, budget=5)
    assert "width:100.0%" in quality_html(session, budget=2)  # the bar stops at full
    plain = quality_html(session)
    assert "5 / 180</b> of the pool labeled (2.8% of the pool; no budget set)" in plain
    with pytest.raises(ValueError, match=r"'budget' parameter of quality_html.*\[1, inf\]"):
        quality_html(session, budget=0)


def test_before_an_evaluation_it_says_when_one_comes(session, tmp_path):
    assert "appear after the first fit, on the held-out split" in quality_html(session)
    s = dal.Session(blobs(holdout=None), store=None, device="cpu", train_config=FAST)
    try:
        text = quality_html(s)
        assert "no held-out split" in text and "dal-quality-confusion" not in text
    finally:
        s.close()


def test_class_names_are_escaped():
    s = dal.Session(
        blobs(classes=("ok", HOSTILE, "a'b\"c")), store=None, device="cpu", train_config=FAST
    )
    try:
        ids = s.dataset.ids[:6].tolist()
        s.label(ids, s.dataset.targets[s.dataset.positions(ids)].tolist())
        s.train(block=True)  # the session evaluates the new model: the confusion matrix shows
        text = quality_html(s)
        assert "dal-quality-confusion" in text
        assert "<img" not in text and "onerror=alert(1)>" not in text
        assert "&lt;img src=x onerror=alert(1)&gt;" in text
        assert "a'b" not in text and "a&#x27;b&quot;c" in text
    finally:
        s.close()


def test_panel_follows_labels_undo_and_evaluations(session):
    ds = session.dataset
    panel = QualityPanel(session, budget=30)
    assert "<b>0 / 30</b>" in panel.widget.value
    ids = ds.ids[:30].tolist()
    targets = ds.targets[ds.positions(ids)]
    expected = {c: int((targets == i).sum()) for i, c in enumerate(ds.classes)}
    session.label(ids, targets.tolist())
    assert "<b>30 / 30</b>" in panel.widget.value
    assert counts_in(panel.widget.value) == expected
    session.label(ds.ids[30:32].tolist(), "a")
    assert counts_in(panel.widget.value)["a"] == expected["a"] + 2
    session.undo()
    assert counts_in(panel.widget.value) == expected

    session.train(block=True)
    result = session.evaluate()
    text = panel.widget.value
    conf = np.array(result["confusion"])
    assert conf.shape == (3, 3) and conf.sum() == result["n_eval"] == 60
    assert np.allclose(np.diag(conf) / conf.sum(1), result["per_class_accuracy"])
    v = result["model_version"]
    assert f"model v{v} · 30 labels · 60 held-out samples" in text
    cells = re.findall(r"title='true ([^,]*), predicted ([^:]*): (\d+)'", text)
    assert len(cells) == 9
    assert {(t, p): int(n) for t, p, n in cells}[("b", "b")] == conf[1, 1]
    assert "appear after the first fit" not in text

    session.add_class("d")  # the newest model has no output for it yet
    assert counts_in(panel.widget.value)["d"] == 0
    assert panel.errors == [] and session.observer_errors == []
    panel.close()
    session.label(ds.ids[40:41].tolist(), "a")
    assert "<b>30 / 30</b>" in panel.widget.value  # closed: it no longer follows


def test_many_classes_show_the_largest_in_a_collapsed_matrix():
    names = [f"c{i:02d}" for i in range(15)]
    counts = np.arange(1, 16)  # held-out support per class: c14 the largest
    y = np.repeat(np.arange(15), counts)
    evaluation = {
        "accuracy": 1.0,
        "per_class_accuracy": [1.0] * 15,
        "confusion": np.diag(np.bincount(y, minlength=15)).tolist(),
        "model_version": 2,
        "n_labels": 40,
    }

    class Pool:
        has_holdout = True

        def __len__(self):
            return 100

    # quality_html reads only these attributes (a 15-class model is not needed to draw one)
    fake = SimpleNamespace(
        labels={}, classes=names, multi_label=False, dataset=Pool(), evaluation=evaluation
    )
    text = quality_html(fake)
    assert "<details style" in text and "12 largest of 15 classes" in text
    shown = set(re.findall(r"title='true (c\d\d), predicted", text))
    assert shown == set(names[3:])
    # Names of up to 3 characters head the columns; a row says its name once ("c14", not
    # "11 c14", which for digits read "0 0").
    assert ">c14</th>" in text and "> c14<" not in text and "11 c14" not in text
    long = quality_html(SimpleNamespace(**{**vars(fake), "classes": [f"class {n}" for n in names]}))
    assert ">11 class c14</th>" in long  # long names: numbered columns, rows say which


def test_multi_label_counts_each_class_and_shows_f1():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = [("x",), ("x", "y"), ("y",), ()] * 20
    ds = dal.datasets.from_arrays(X, y=y, classes=["x", "y"], multi_label=True, holdout=0.25)
    s = dal.Session(ds, store=None, device="cpu", train_config=FAST, retrain="manual")
    try:
        ids = ds.ids[:3].tolist()
        s.label(ids, [["x"], ["x", "y"], []])
        text = quality_html(s)
        assert counts_in(text) == {"x": 2, "y": 1} and "counts in each" in text
        more = ds.ids[3:23].tolist()
        rows = ds.targets[ds.positions(more)]
        s.label(more, [[c for c, on in zip("xy", row) if on] for row in rows])
        s.train(block=True)
        text = quality_html(s)
        assert "F1</th>" in text and "micro-F1" in text
        assert "dal-quality-confusion" not in text  # no confusion matrix for multi-label data
        assert len(s.evaluation["per_class_f1"]) == 2
    finally:
        s.close()
