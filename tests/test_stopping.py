"""Stopping signals: Cohen's kappa, the stabilizing-predictions rule, the session monitor."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

import dal_widgets as dal
from dal_widgets.stopping import StopMonitor, cohen_kappa, stabilizing_stop
from dal_widgets.training import TrainConfig


@pytest.mark.parametrize("seed", range(6))
def test_kappa_equals_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, size=300)
    b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 4, size=300))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    names = np.array(list("wxyz"))
    assert cohen_kappa(names[a], names[b]) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_kappa_edge_cases_and_bad_input():
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0  # constant and equal: full agreement
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="'b' parameter of cohen_kappa"):
        cohen_kappa([0, 1], [0, 1, 1])


def test_stabilizing_rule_on_known_sequences():
    assert stabilizing_stop([0.5, 0.9, 0.995, 0.999, 0.998]) == 4  # mean of the last 3 >= 0.99
    assert stabilizing_stop([0.999, 0.999]) is None  # fewer than 3 comparisons
    assert stabilizing_stop([0.98, 0.98, 0.98]) is None
    assert stabilizing_stop([0.98, 0.98, 0.98], threshold=0.95) == 2  # more aggressive
    assert stabilizing_stop([0.9, 0.999], window=1) == 1
    with pytest.raises(ValueError, match="'threshold'"):
        stabilizing_stop([1.0], threshold=1.5)
    with pytest.raises(ValueError, match="'window'"):
        stabilizing_stop([1.0], window=0)


def test_plateau_rule_on_known_sequences():
    from dal_widgets.stopping import plateau_stop

    assert plateau_stop([0.5, 0.7, 0.8, 0.801, 0.802, 0.803]) == 5  # +0.003 over 3 rounds
    assert plateau_stop([0.5, 0.7, 0.8, 0.9]) is None  # still learning
    assert plateau_stop([0.9, 0.8, 0.85, 0.7]) == 3  # falling counts as flat
    assert plateau_stop([0.5, 0.6], window=1, min_gain=0.2) == 1
    with pytest.raises(ValueError, match="'min_gain'"):
        plateau_stop([0.5], min_gain=-1)


def _blobs(n=300, holdout=0.25):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    X = np.array([[0, 0], [3, 0], [0, 3]])[y] + rng.normal(scale=0.9, size=(n, 2))
    return dal.datasets.from_arrays(X, y=np.array(list("abc"))[y], holdout=holdout)


def _random_session():
    ds = _blobs()
    return ds, dal.Session(
        ds,
        strategy="random",
        store=None,
        device="cpu",
        retrain="manual",
        train_config=TrainConfig(steps=60),
    )


def test_a_model_that_stops_changing_is_reported_stable_and_the_plateau_seen():
    ds, s = _random_session()
    monitor = StopMonitor(s, stop_set=100, budget=500)
    assert len(monitor.positions) == 100
    ids = s.query(30)
    s.label(ids, ds.targets[ds.positions(ids)].tolist())
    s.train(block=True)
    assert monitor.kappas == () and not monitor.signals().stable
    for _ in range(4):  # new rounds, the same labels: the same seeded model, the same answers
        s.query(1)
        s.train(block=True)
    signals = monitor.signals()
    assert signals.kappas == (1.0, 1.0, 1.0, 1.0) and signals.stable
    assert signals.plateau_gain == 0.0 and signals.plateau and signals.recommend_stop
    text = signals.describe()
    assert "predictions stable over the last 3 models: kappa 1.000" in text
    assert "you could stop here" in text and "budget: 30 of 500" in text
    monitor.close()
    s.close()


def test_a_model_still_learning_is_not_stable_and_the_budget_counts():
    ds, s = _random_session()
    monitor = StopMonitor(s, stop_set=200, budget=12)
    for n in (3, 3, 3, 3):  # a handful of labels at a time: the model moves
        ids = s.query(n)
        s.label(ids, ds.targets[ds.positions(ids)].tolist())
        s.train(block=True)
    signals = monitor.signals()
    assert len(signals.kappas) == 3 and not signals.stable
    assert signals.labeled == 12 and signals.recommend_stop  # the budget is spent
    assert "budget: 12 of 12" in signals.describe()
    monitor.close()
    s.close()


def test_monitor_bad_arguments():
    s = dal.Session(_blobs(), store=None, device="cpu")
    with pytest.raises(TypeError, match="'session' parameter of StopMonitor"):
        StopMonitor("session")
    with pytest.raises(ValueError, match="'stop_set'"):
        StopMonitor(s, stop_set=3)
    with pytest.raises(ValueError, match="'threshold'"):
        StopMonitor(s, threshold=2)
    s.close()
