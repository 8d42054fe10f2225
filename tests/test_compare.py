from __future__ import annotations

import time

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.training import TrainConfig


@pytest.fixture(scope="module")
def ds():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    X = rng.normal(size=(300, 4)) * 0.8 + y[:, None]
    return dal.datasets.from_arrays(X, y=y, holdout=0.2)


def test_runs_in_background_with_live_curves(ds):
    w = dal.CompareWidget(
        ds,
        ["random", "margin"],
        initial=6,
        batch=6,
        budget=18,
        seeds=2,
        device="cpu",
        train_config=TrainConfig(steps=30),
    )
    assert w.progress.max == 2 * 2 * 3
    assert w.wait(120) and w.error is None
    assert w.progress.value == 12 and w.status.value == "done · 2 seeds"
    lo, hi = w.chart.y_range  # fitted to the curves, not a fixed 0-1 axis
    ys = [v for s in w.chart.series for k in ("y", "band_lo", "band_hi") for v in s[k]]
    assert 0.0 <= lo <= min(ys) and max(ys) <= hi <= 1.0 and (lo, hi) != (0.0, 1.0)
    names = [s["name"] for s in w.chart.series]
    assert names == ["random", "margin"]
    assert w.chart.series[0]["x"] == [6.0, 12.0, 18.0] and "band_lo" in w.chart.series[0]
    assert "AUBC" in w.table.value
    assert len(w.result.to_records()) == 12


def test_stop_keeps_partial_results(ds):
    w = dal.CompareWidget(
        ds,
        ["random"],
        initial=3,
        batch=3,
        budget=60,
        seeds=1,
        device="cpu",
        train_config=TrainConfig(steps=200),
        autostart=False,
    )
    w.run()
    deadline = time.monotonic() + 60
    while w.progress.value < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    assert w.wait(60)
    assert w.status.value.startswith("stopped") and 1 <= len(w.result.records) < 20


def test_errors_are_shown_not_printed(ds, capsys):
    w = dal.CompareWidget(ds, ["random"], initial=-1, device="cpu")
    assert w.wait(30)
    assert "initial&#x27; parameter of simulate" in w.status.value and "Traceback" in w.error
    assert capsys.readouterr().err == ""


@pytest.mark.e2e
def test_compare_widget_draws_curves_in_the_browser(lab):
    from _lab import wait_until

    page = lab.open_notebook(
        [
            "import dal_widgets as dal\n"
            "from dal_widgets.training import TrainConfig\n"
            "ds = dal.datasets.digits()\n"
            "cmp = dal.CompareWidget(ds, ['random', 'margin'], initial=20, batch=10, budget=40, seeds=1,\n"
            "                        device='cpu', train_config=TrainConfig(steps=60))\n"
            "cmp",
        ]
    )
    lines = page.locator(".dal-compare .dal-chart polyline")
    wait_until(lambda: lines.count() == 2, timeout=120, what="two learning curves")
    wait_until(
        lambda: "AUBC" in page.locator(".dal-compare").inner_text(),
        timeout=120,
        what="the final table",
    )
    lab.save_screenshot(page, "compare")


def test_one_seed_says_so(ds):
    w = dal.CompareWidget(
        ds,
        ["random"],
        initial=6,
        batch=6,
        budget=12,
        seeds=1,
        device="cpu",
        train_config=TrainConfig(steps=20),
    )
    assert w.wait(120) and w.error is None
    assert "one seed: a difference between strategies may be chance" in w.status.value
