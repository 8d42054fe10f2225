from __future__ import annotations

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.baselines import BASELINE, label_spreading_baseline
from dal_widgets.simulation import SimulationResult


@pytest.fixture(scope="module")
def digits():
    return dal.datasets.digits()


def test_the_baseline_learns_from_the_pool_with_a_few_labels(digits):
    records = label_spreading_baseline(digits, [10, 30], seeds=2)
    assert [(r["seed"], r["labels"]) for r in records] == [(0, 10), (0, 30), (1, 10), (1, 30)]
    assert {r["strategy"] for r in records} == {BASELINE}
    at30 = [r["accuracy"] for r in records if r["labels"] == 30]
    # 30 labels and the pool: about 0.96 on digits (a model from 30 labels alone: about 0.75).
    assert min(at30) > 0.9
    assert all(r["distinct_picks"] <= r["labels"] for r in records)
    # The records join a simulation's: one table, one more row.
    table = SimulationResult(records=records, budget=30).table()
    assert table.splitlines()[0].split() == ["labels", BASELINE]


def test_the_baseline_is_the_same_for_the_same_seed(digits):
    a = label_spreading_baseline(digits, [20], seeds=[3])
    b = label_spreading_baseline(digits, [20], seeds=[3])
    assert a[0]["accuracy"] == b[0]["accuracy"] and a[0]["seed"] == 3


def test_bad_input_names_the_parameter(digits):
    with pytest.raises(ValueError, match="'budgets'"):
        label_spreading_baseline(digits, [0])
    with pytest.raises(ValueError, match="'budgets'"):
        label_spreading_baseline(digits, [len(digits) + 1])
    unsplit = dal.datasets.from_arrays(
        np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3
    )
    with pytest.raises(ValueError, match="'dataset'"):
        label_spreading_baseline(unsplit, [5])
