"""The reprs people read in notebooks: rounded, with units, no Unix times, no ``nan``."""

from __future__ import annotations

import math
import pickle
import re
import sys
import time

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets._query import Query
from dal_widgets._repr import fmt_float, fmt_fraction, fmt_seconds, fmt_spread, fmt_time
from dal_widgets.simulation import SimulationResult
from dal_widgets.store import RoundRecord
from dal_widgets.training import ModelVersion, TrainConfig

NOW = time.time()

#: Decimal numbers (not part of a longer token such as an id or a version "v3.1").
_DECIMAL = re.compile(r"(?<![\w.])(\d+)\.(\d+)(?![\w.])")


def assert_readable(text: str) -> None:
    """No float with more than 4 significant digits (counts and ids are ints, so digits
    before a missing decimal point are fine), no scientific notation, no Unix time, no nan."""
    for whole, frac in _DECIMAL.findall(text):
        digits = (whole + frac).lstrip("0")
        assert len(digits) <= 4, f"{whole}.{frac} has too many digits in {text!r}"
    assert not re.search(r"\d{5,}\.\d|\d\.\d{5,}", text), text
    assert not re.search(r"\d[eE][-+]?\d", text), f"scientific notation in {text!r}"
    assert not re.search(r"(?<!\d)1[78]\d{8}(?!\d)", text), f"a Unix time in {text!r}"
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), f"nan in {text!r}"


@pytest.fixture(scope="module")
def ds():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [3, 0], [0, 3]], dtype=float)
    y = np.arange(120) % 3
    X = centers[y] + rng.normal(scale=0.8, size=(120, 2))
    return dal.datasets.from_arrays(X, y=y, holdout=0.25)


@pytest.fixture(scope="module")
def res(ds):
    return dal.simulate(
        ds,
        ["random", "margin"],
        initial=6,
        batch=5,
        budget=16,
        seeds=2,
        device="cpu",
        train_config=TrainConfig(steps=20),
    )


def test_simulation_result_repr(res):
    text = repr(res)
    assert_readable(text)
    assert text.startswith("SimulationResult(2 strategies, 2 seeds, 6 initial -> budget 16")
    assert "median of 2 seeds" in text
    for line, name in zip(text.splitlines()[2:], ["random", "margin"]):
        assert line.split()[0] == name and line.endswith("at 16 labels")
    assert str(res) == text
    html = res._repr_html_()
    assert_readable(html)
    assert html.startswith("<table>") and html.count("<tr>") == 3


def test_simulation_result_repr_one_seed(ds):
    one = dal.simulate(
        ds,
        ["margin"],
        initial=6,
        batch=5,
        budget=11,
        seeds=1,
        baseline=None,
        device="cpu",
        train_config=TrainConfig(steps=20),
    )
    text = repr(one)
    assert_readable(text)
    assert "1 seed" in text and "IQR" not in text and one.strategies == ["margin"]


def test_simulation_result_repr_by_hand():
    rows = [
        {"strategy": "s", "seed": seed, "round": rnd, "labels": 10 + 10 * rnd, "accuracy": acc}
        for seed, accs in enumerate([[0.5, 0.7, 0.9], [0.5, 0.6, 0.8], [0.4, 0.7, 1.0]])
        for rnd, acc in enumerate(accs)
    ]
    res = SimulationResult(records=rows, budget=30, initial=10)
    assert "  s  0.900 (IQR 0.850-0.950) at 30 labels" in repr(res)
    nan = SimulationResult(records=[{**rows[0], "accuracy": math.nan}])
    assert_readable(repr(nan))
    assert_readable(nan._repr_html_())
    assert "—" in repr(nan)
    assert repr(SimulationResult(budget=5)) == "SimulationResult(no records; budget 5 labels)"


def test_html_escapes_names():
    hostile = "<img src=x onerror=alert(1)>"
    res = SimulationResult(
        records=[{"strategy": hostile, "seed": 0, "round": 0, "labels": 5, "accuracy": 0.5}]
    )
    html = res._repr_html_()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert hostile in repr(res)  # plain text is not markup


def test_labels_to_reach_reads_and_indexes_like_before(res):
    reach = res.labels_to_reach(0.0)
    assert reach == {"random": [6, 6], "margin": [6, 6]} and isinstance(reach, dict)
    assert reach["margin"][0] == 6
    text = repr(reach)
    assert_readable(text)
    assert "margin  6 labels (median of 2 seeds)" in text
    never = res.labels_to_reach(1.0 - 1e-9)
    assert_readable(repr(never))
    by_hand = SimulationResult(
        records=[
            {"strategy": "m", "seed": s, "round": r, "labels": n, "accuracy": a}
            for s, curve in enumerate([[0.5, 0.9, 0.9], [0.5, 0.5, 0.9], [0.5, 0.5, 0.5]])
            for r, (n, a) in enumerate(zip([60, 70, 80], curve))
        ],
        budget=80,
    )
    text = repr(by_hand.labels_to_reach(0.9))
    assert "m  75 labels (median of the 2 of 3 seeds that reached it; IQR 72.5-77.5)" in text
    assert "not reached in 3 seeds (budget 80 labels)" in repr(by_hand.labels_to_reach(0.95))
    assert pickle.loads(pickle.dumps(reach)) == reach


def test_seconds_reads_and_indexes_like_before(res):
    sec = res.seconds("margin")
    assert set(sec) == {"train_s", "infer_s", "select_s", "seconds"}
    assert all(isinstance(v, float) and v >= 0 for v in sec.values())
    assert {k: round(v, 3) for k, v in sec.items()}  # how the notebooks use it
    text = repr(sec)
    assert_readable(text)
    assert text.startswith("margin, mean per round over 6 rounds: train ")
    assert re.search(r"whole round [\d.]+ (ms|s)$", text)
    with pytest.raises(KeyError, match="No records for strategy 'nope'"):
        res.seconds("nope")


def test_to_frame(res):
    pytest.importorskip("pandas")
    assert len(res.to_frame()) == len(res.records)
    frame = res.labels_to_reach(0.0).to_frame()
    assert frame.loc["margin", "median"] == 6 and frame.loc["margin", "seeds"] == 2
    assert res.seconds("margin").to_frame().index.tolist() == ["margin"]


def test_to_frame_without_pandas(res, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas.*pip install pandas"):
        res.labels_to_reach(0.5).to_frame()
    with pytest.raises(ImportError, match="SimulationResult.to_frame needs pandas"):
        res.to_frame()


def test_model_version_repr():
    mv = ModelVersion(3, 120, 1.8412345678, 40, 0.21345678, NOW, "k", "l")
    text = repr(mv)
    assert_readable(text)
    assert re.fullmatch(
        r"ModelVersion\(v3, 120 labels, 1\.84 s, loss 0\.213, finished \d\d:\d\d:\d\d\)", text
    )
    # The dataclass keeps its fields and equality.
    assert mv == ModelVersion(3, 120, 1.8412345678, 40, 0.21345678, NOW, "k", "l")
    old = repr(ModelVersion(1, 5, 1.0296e-05, 1, math.nan, NOW - 3 * 86400))
    assert_readable(old)
    assert "10.3 µs" in old and "loss —" in old
    assert re.search(r"finished \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)$", old)


def test_round_record_repr():
    full = RoundRecord(
        round=3,
        strategy="margin",
        queried=10,
        infer_s=1.0295999970821867e-05,
        select_s=0.0021234567,
        n_labels_at_query=110,
        model_version=4,
        train_s=1.8412345,
        n_labels=120,
        accuracy=0.91234567,
        eval_model_version=4,
        eval_n_labels=120,
    )
    text = repr(full)
    assert_readable(text)
    assert text == (
        "RoundRecord(round 3, margin, 10 queried at 110 labels, infer 10.3 µs, "
        "select 2.12 ms, model v4 trained on 120 labels in 1.84 s, accuracy 0.912 (v4, 120 labels))"
    )
    for bare in (RoundRecord(round=1), RoundRecord(round=1, accuracy=math.nan)):
        assert repr(bare) == "RoundRecord(round 1, accuracy —)"


def test_history_row_keeps_values_and_reads_well():
    row = RoundRecord(round=2, strategy="margin", infer_s=1.0295999970821867e-05).history_row()
    assert math.isnan(row["accuracy"]) and row["infer_s"] == 1.0295999970821867e-05
    assert isinstance(row, dict) and dict(row).keys() == row.keys()
    text = repr(row)
    assert_readable(text)
    assert "'accuracy': —" in text and "'infer_s': 10.3 µs" in text and str(row) == text
    again = pickle.loads(pickle.dumps(row))
    assert again.keys() == row.keys() and repr(again) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (4e-10, "0.4 ns"),
        (1.0295999970821867e-05, "10.3 µs"),
        (0.0021, "2.1 ms"),
        (0.99996, "1 s"),  # rounding moves it up a unit, never "1000 ms"
        (1.8412345, "1.84 s"),
        (125.4, "2 min 05 s"),
        (3725, "1 h 02 min"),
        (None, "—"),
        (math.nan, "—"),
    ],
)
def test_fmt_seconds(seconds, text):
    assert fmt_seconds(seconds) == text


def test_fmt_numbers_and_times():
    assert [fmt_float(x) for x in (0.21345678, 3.0, 12345.678, 1.2e-7, math.inf)] == [
        "0.2135",
        "3",
        "12346",
        "1.2e-07",
        "inf",
    ]
    assert fmt_fraction(0.9) == "0.900" and fmt_fraction(None) == "—"
    assert fmt_spread([0.9, 0.92, 0.93], fmt_fraction) == "0.920 (IQR 0.910-0.925)"
    assert fmt_spread([7, 7]) == "7" and fmt_spread([math.nan]) == "—"
    assert fmt_time(0) == "—" and fmt_time(None) == "—"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", fmt_time(NOW, now=NOW))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fmt_time(NOW - 86400 * 400, now=NOW))


def test_query_repr():
    q = Query(2, [12, 7, 33, 4], np.arange(4), "margin", np.linspace(0, 1, 500), 1.0296e-05, 0.5)
    text = repr(q)
    assert_readable(text)
    assert text == (
        "Query(round 2, margin, 4 ids [12, 7, 33, ...], infer 10.3 µs, select 500 ms, "
        "scores over 500 samples)"
    )
    assert "no scores" in repr(Query(1, ["a"], np.arange(1), "badge", None))
