from __future__ import annotations

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.simulation import SimulationResult, balanced_initial
from dal_widgets.training import TrainConfig

FAST = TrainConfig(steps=40, batch_size=32)


@pytest.fixture(scope="module")
def ds():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [3, 0], [0, 3]], dtype=float)
    y = np.arange(300) % 3
    X = centers[y] + rng.normal(scale=0.8, size=(300, 2))
    return dal.datasets.from_arrays(X, y=y, holdout=0.2)


def test_balanced_initial():
    targets = np.repeat(np.arange(4), 25)
    pos = balanced_initial(targets, 10, 4, np.random.default_rng(0))
    counts = np.bincount(targets[pos], minlength=4)
    assert (
        counts.sum() == 10 and counts.min() == 2 and counts.max() == 3 and np.unique(pos).size == 10
    )


def test_simulate_records_curves_and_summaries(ds):
    res = dal.simulate(
        ds,
        ["random", "margin"],
        initial=6,
        batch=5,
        budget=21,
        seeds=2,
        device="cpu",
        train_config=FAST,
    )
    recs = res.to_records()
    assert len(recs) == 2 * 2 * 4  # strategies x seeds x rounds (6, 11, 16, 21 labels)
    assert {r["labels"] for r in recs} == {6, 11, 16, 21}
    assert {
        "strategy",
        "seed",
        "round",
        "labels",
        "accuracy",
        "train_s",
        "infer_s",
        "select_s",
        "seconds",
    } <= set(recs[0])
    # the same initial labels per seed: round 0 identical across strategies
    r0 = {(r["strategy"], r["seed"]): r["accuracy"] for r in recs if r["round"] == 0}
    assert r0[("random", 0)] == r0[("margin", 0)]
    curve = res.curve("margin")
    assert curve["labels"].tolist() == [6, 11, 16, 21]
    assert np.all(curve["q25"] <= curve["q75"])
    assert 0.0 < res.aubc("margin") <= 1.0
    reach = res.labels_to_reach(0.0)
    assert reach["random"] == [6, 6]
    assert "AUBC" in res.table() and "margin" in res.table()


def test_aubc_by_hand():
    res = SimulationResult(
        records=[
            {"strategy": "s", "seed": 0, "round": 0, "labels": 10, "accuracy": 0.5},
            {"strategy": "s", "seed": 0, "round": 1, "labels": 20, "accuracy": 0.7},
            {"strategy": "s", "seed": 0, "round": 2, "labels": 40, "accuracy": 0.9},
        ]
    )
    # trapezoids: 10*(0.6) + 20*(0.8) = 22 over a width of 30
    assert res.aubc("s") == pytest.approx(22 / 30)
    assert res.labels_to_reach(0.7) == {"s": [20]} and res.labels_to_reach(0.95) == {"s": [None]}


def test_label_noise_changes_answers(ds):
    clean = dal.simulate(
        ds, ["random"], initial=30, batch=10, budget=30, seeds=1, device="cpu", train_config=FAST
    )
    noisy = dal.simulate(
        ds,
        ["random"],
        initial=30,
        batch=10,
        budget=30,
        seeds=1,
        noise=0.9,
        device="cpu",
        train_config=FAST,
    )
    assert noisy.records[0]["accuracy"] < clean.records[0]["accuracy"]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"strategies": ["nope"]}, KeyError, "Unknown strategy"),
        ({"strategies": []}, ValueError, "'strategies'"),
        ({"initial": -1}, ValueError, "'initial'"),
        ({"budget": 5, "initial": 10}, ValueError, "'budget'"),
        ({"batch": 0}, ValueError, "'batch'"),
        ({"seeds": 0}, ValueError, "'seeds'"),
        ({"noise": 1.0}, ValueError, "'noise'"),
    ],
)
def test_simulate_bad_input(ds, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dal.simulate(ds, **{"strategies": ["random"], **kwargs})


def test_simulate_needs_targets_and_holdout():
    unl = dal.datasets.from_arrays(np.zeros((10, 2)), classes=["a", "b"])
    with pytest.raises(ValueError, match="known labels"):
        dal.simulate(unl, ["random"])
    no_hold = dal.datasets.from_arrays(np.zeros((10, 2)), y=[0, 1] * 5)
    with pytest.raises(ValueError, match="held-out"):
        dal.simulate(no_hold, ["random"])


def test_simulate_reports_where_stabilizing_predictions_would_stop():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    X = np.array([[0, 0], [4, 0], [0, 4]])[y] + rng.normal(scale=0.6, size=(300, 2))
    ds = dal.datasets.from_arrays(X, y=np.array(list("abc"))[y], holdout=0.2)
    res = dal.simulate(
        ds,
        ["random"],
        initial=6,
        batch=6,
        budget=60,
        seeds=2,
        device="cpu",
        train_config=TrainConfig(steps=60),
    )
    kappas = [r["kappa"] for r in res.records]
    assert kappas[0] is None and all(k is not None and -1 <= k <= 1 for k in kappas[1:10])
    report = res.stopping(window=2, threshold=0.9)  # easy blobs: the models settle early
    assert [(r["strategy"], r["seed"]) for r in report] == [("random", 0), ("random", 1)]
    for row in report:
        assert row["stop_labels"] is not None and row["stop_labels"] < row["final_labels"] == 60
        assert row["labels_saved"] == 60 - row["stop_labels"]
        assert row["accuracy_given_up"] == pytest.approx(
            row["final_accuracy"] - row["stop_accuracy"]
        )
    never = res.stopping(window=50)  # more comparisons than the run has: never stable
    assert all(r["stop_labels"] is None and r["labels_saved"] == 0 for r in never)
    assert "never stable up to 60 labels" in repr(never)
    assert "labels saved" in repr(report) and "stabilizing predictions" in repr(report)
    # The held-out plateau rule, on the same runs: where the best accuracy stopped rising.
    flat = res.stopping(window=2, min_gain=1.0)  # any gain below 1.0 counts: the first chance
    assert all(r["plateau_labels"] == 6 + 2 * 6 for r in flat)  # round 2 (window 2)
    by_round = {(r["seed"], r["labels"]): r["accuracy"] for r in res.records}
    assert all(r["plateau_accuracy"] == by_round[(r["seed"], 18)] for r in flat)
    assert all(r["plateau_labels"] is None for r in res.stopping(min_gain=0.0))  # never < 0
    assert "held-out plateau: 2 of 2 runs flattened, median at 18 labels" in repr(flat)


def test_random_is_run_as_the_baseline_and_compared_seed_by_seed():
    rng = np.random.default_rng(1)
    y = np.arange(240) % 3
    X = rng.normal(size=(240, 4)) * 0.9 + y[:, None]
    ds = dal.datasets.from_arrays(X, y=y, holdout=0.25)
    res = dal.simulate(
        ds,
        ["margin"],
        initial=6,
        batch=6,
        budget=24,
        device="cpu",
        train_config=TrainConfig(steps=30),
    )
    assert res.strategies == ["random", "margin"]  # the baseline arm, added
    assert sorted({r["seed"] for r in res.records}) == [0, 1, 2]  # three seeds by default
    v = res.versus("random")["margin"]
    assert v["seeds"] == 3 and 0 <= v["wins"] <= 3
    assert v["ci_low"] <= v["aubc_diff"] <= v["ci_high"]
    assert sorted(v["wins_by_labels"]) == [6, 12, 18, 24]
    assert all(0.0 <= share <= 1.0 for share in v["wins_by_labels"].values())
    assert "against random, paired by seed" in repr(res) and "beats it in" in repr(res)
    with pytest.raises(KeyError, match="'bald' was not run"):
        res.versus("bald")
    alone = dal.simulate(
        ds,
        ["margin"],
        initial=6,
        batch=6,
        budget=12,
        seeds=1,
        baseline=None,
        device="cpu",
        train_config=TrainConfig(steps=30),
    )
    assert alone.strategies == ["margin"] and "against random" not in repr(alone)


def test_cold_start_protocol_lets_the_strategy_pick_the_first_batch(ds):
    res = dal.simulate(
        ds,
        strategies=["auto", "margin"],
        initial=0,
        batch=6,
        budget=18,
        seeds=1,
        device="cpu",
        train_config=TrainConfig(steps=30),
    )
    for name in ("auto", "margin"):
        labels = [r["labels"] for r in res.records if r["strategy"] == name]
        assert labels == [6, 12, 18]  # no balanced seed: the first model has the first batch
    assert res.initial == 0
