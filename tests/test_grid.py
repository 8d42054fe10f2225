"""Simulation grids on executors (dal_widgets/_grid.py): local processes, Ray, a caller's
executor; identical curves to the serial run, resumable results files, failing cells."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dal_widgets as dal
from dal_widgets._grid import GridFile, cell_key, describe

REPO = Path(__file__).resolve().parents[1]
GRID = {"initial": 20, "batch": 10, "budget": 40, "device": "cpu"}


@pytest.fixture(scope="module")
def ds():
    return dal.datasets.digits()


@pytest.fixture(scope="module")
def serial(ds):
    """The reference: 2 strategies x 2 seeds, one after another in this process, at one torch
    thread like each worker (equal curves are promised at equal thread counts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dal.simulate(ds, ["margin"], seeds=2, **GRID)
    finally:
        torch.set_num_threads(before)


def one_thread():
    torch.set_num_threads(1)


def curves(res):
    """Every round of every cell, in a fixed order: (strategy, seed, labels, accuracy)."""
    return sorted((r["strategy"], r["seed"], r["labels"], r["accuracy"]) for r in res.records)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_processes_give_the_serial_curves_and_stream_cells(ds, serial):
    events = []
    res = dal.simulate(
        ds, ["margin"], seeds=2, executor="processes", max_workers=2, on_cell=events.append, **GRID
    )
    assert curves(res) == curves(serial)
    assert res.failures == []
    done = [e for e in events if e["state"] == "done"]
    assert len(done) == 4 and done[-1]["done"] == 4 and done[-1]["total"] == 4
    assert max(e["running"] for e in events) == 2  # two workers busy at once
    assert all(":" in e["where"] for e in done)  # host:pid of the worker


@pytest.mark.slow
def test_ray_gives_the_serial_curves(ds, serial, ray_local):
    del ray_local
    res = dal.simulate(ds, ["margin"], seeds=2, executor="ray", **GRID)
    assert curves(res) == curves(serial)
    assert res.failures == []


@pytest.mark.slow
def test_ray_takes_a_model_defined_in_place(ds, ray_local):
    del ray_local

    def model(input_shape, n_classes):  # not importable by workers: Ray pickles it by value
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, n_classes)
        )

    res = dal.simulate(ds, ["margin"], seeds=1, baseline=None, model=model, executor="ray", **GRID)
    assert res.failures == [] and max(r["labels"] for r in res.records) == GRID["budget"]
    with pytest.raises(TypeError, match="cannot be pickled"):
        dal.simulate(ds, ["margin"], seeds=1, model=model, executor="processes", **GRID)


@pytest.mark.slow
def test_a_caller_s_executor_gives_the_serial_curves(ds, serial):
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn, initializer=one_thread) as pool:
        res = dal.simulate(ds, ["margin"], seeds=2, executor=pool, **GRID)
    assert curves(res) == curves(serial)
    # Threads of one process share torch's global generator, which fits seed and draw
    # from: each fit holds it alone, so the cells' fits take turns and repeat the serial run.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(2) as threads:
            res = dal.simulate(ds, ["margin"], seeds=2, executor=threads, **GRID)
    finally:
        torch.set_num_threads(before)
    assert curves(res) == curves(serial)


def no_dropout_model(input_shape, n_classes):
    """A model without dropout: BALD refuses it, random takes it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), n_classes))


@pytest.mark.parametrize("executor", ["processes", "threads"])
def test_a_failing_cell_is_reported_and_the_others_run_on(ds, executor):
    pool = ThreadPoolExecutor(2) if executor == "threads" else None
    with pytest.warns(RuntimeWarning, match="2 of 4 cells failed"):
        res = dal.simulate(
            ds,
            ["bald"],
            seeds=2,
            model=no_dropout_model,
            executor=pool or executor,
            **GRID,
        )
    if pool:
        pool.shutdown()
    assert sorted((f["strategy"], f["seed"]) for f in res.failures) == [("bald", 0), ("bald", 1)]
    assert all("Traceback" in f["error"] and "dropout" in f["error"] for f in res.failures)
    assert {(r["strategy"], r["seed"]) for r in res.records} == {("random", 0), ("random", 1)}
    assert max(r["labels"] for r in res.records) == GRID["budget"]  # random ran to the end
    text = repr(res)
    assert "2 cells failed" in text and "bald seed 0" in text


def test_serial_runs_still_raise(ds):
    with pytest.raises(ValueError, match="dropout"):
        dal.simulate(ds, ["bald"], seeds=1, baseline=None, model=no_dropout_model, **GRID)


def test_a_results_file_skips_finished_cells_and_drops_a_cut_line(ds, serial, tmp_path):
    path = tmp_path / "grid.jsonl"
    first = dal.simulate(ds, ["margin"], seeds=[0], results=path, **GRID)
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # random and margin at seed 0
    entry = json.loads(lines[0])
    assert entry["config"]["dataset"]["fingerprint"] == ds.fingerprint and len(entry["key"]) == 24
    with open(path, "a") as fh:
        fh.write('{"key": "cut short by a kill", "reco')  # a driver killed mid-write
    events = []
    again = dal.simulate(ds, ["margin"], seeds=2, results=path, on_cell=events.append, **GRID)
    assert curves(again) == curves(serial)
    states = [(e["strategy"], e["seed"], e["state"]) for e in events]
    assert ("random", 0, "resumed") in states and ("random", 0, "running") not in states
    assert ("margin", 1, "running") in states
    assert events[-1]["resumed"] == 2 and events[-1]["done"] == 2
    assert len(path.read_text().splitlines()) == 4  # the cut line is gone, two new cells
    assert curves(first) == [c for c in curves(serial) if c[1] == 0]
    events.clear()
    dal.simulate(ds, ["margin"], seeds=2, results=path, on_cell=events.append, **GRID)
    assert [e["state"] for e in events] == ["resumed"] * 4  # nothing runs, nothing written
    assert len(path.read_text().splitlines()) == 4
    events.clear()
    noisy = dal.simulate(
        ds, ["margin"], seeds=[0], noise=0.1, results=path, on_cell=events.append, **GRID
    )
    assert [e["state"] for e in events].count("resumed") == 0  # another oracle: new cells
    assert curves(noisy) != curves(first)


_KEYS = """
import functools, json, sys
import numpy as np
import dal_widgets as dal
from dal_widgets._grid import describe
from dal_widgets.simulation import _data_key
from dal_widgets.training import default_model
print(json.dumps([describe(dal.TrainConfig(steps=7)), describe(functools.partial(default_model, kind="image")),
                  describe(np.arange(5)), describe(np.array(["a", 3], dtype=object)),
                  _data_key(dal.datasets.digits())], sort_keys=True))
"""


def test_keys_are_the_same_in_another_process():
    from dal_widgets.simulation import _data_key
    from dal_widgets.training import default_model

    here = [
        describe(dal.TrainConfig(steps=7)),
        describe(functools.partial(default_model, kind="image")),
        describe(np.arange(5)),
        describe(np.array(["a", 3], dtype=object)),
        _data_key(dal.datasets.digits()),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _KEYS],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert json.loads(out.stdout) == json.loads(json.dumps(here, sort_keys=True))


def test_a_changed_setting_is_a_new_cell(ds, tmp_path):
    base = {"dataset": ds.fingerprint, "strategy": "margin", "seed": 0, "budget": 40}
    assert cell_key(base) == cell_key(dict(base))
    assert cell_key(base) != cell_key({**base, "budget": 50})
    config = dal.TrainConfig(steps=10)
    assert describe(config) != describe(dal.TrainConfig(steps=11))
    assert describe(no_dropout_model) == describe(no_dropout_model)
    a, b = no_dropout_model((64,), 10), no_dropout_model((64,), 10)
    assert describe(a)["weights"] != describe(b)["weights"]  # other random weights
    wide = functools.partial(nn.Linear, 64, out_features=10)
    assert describe(wide) != describe(functools.partial(nn.Linear, 64, out_features=12))
    assert describe(nn.Linear)["class"] == "torch.nn.modules.linear.Linear"  # a class: no crash

    def scaled(factor):
        return lambda shape, n: nn.Sequential(nn.Flatten(), nn.Linear(64, factor))

    assert describe(scaled(10)) != describe(scaled(20))  # closures count
    assert "0x" not in json.dumps(describe(object()))  # no addresses: stable across runs


def test_a_results_file_is_held_by_one_grid(tmp_path):
    first = GridFile(tmp_path / "g.jsonl", "simulate")
    first.open()
    with pytest.raises(RuntimeError, match="in use by another running grid"):
        GridFile(tmp_path / "g.jsonl", "simulate").open()
    first.close()
    GridFile(tmp_path / "g.jsonl", "simulate").open()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"executor": "threads"}, "'executor' parameter of simulate must be None"),
        ({"executor": "processes", "max_workers": 0}, "'max_workers' parameter"),
        ({"results": 3}, "'results' parameter of simulate"),
    ],
)
def test_bad_grid_settings_are_refused(ds, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dal.simulate(ds, ["margin"], seeds=1, **GRID, **kwargs)


def test_a_model_the_workers_cannot_get_is_refused_before_any_starts(ds):
    with pytest.raises(TypeError, match="cannot be pickled.*module the workers can import"):
        dal.simulate(
            ds,
            ["margin"],
            seeds=1,
            model=lambda shape, n: nn.Sequential(nn.Flatten(), nn.Linear(64, n), nn.Dropout(0.2)),
            executor="processes",
            **GRID,
        )


def test_code_from_a_notebook_is_refused_for_processes(ds, monkeypatch):
    # In a kernel, __main__ has no file: spawned workers cannot import what it defines, and
    # each cell would die unpickling it with an unclear BrokenProcessPool.
    notebook = types.ModuleType("__main__")

    def model(input_shape, n_classes):
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, n_classes))

    model.__module__, model.__qualname__ = "__main__", "model"
    notebook.model = model
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    with pytest.raises(TypeError, match=r"defined in the notebook \(model\).*executor='ray'"):
        dal.simulate(ds, ["margin"], seeds=1, model=model, executor="processes", **GRID)


def test_ray_missing_names_the_extra(ds, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'dal-widgets\[ray\]'"):
        dal.simulate(ds, ["margin"], seeds=1, executor="ray", **GRID)


_DRIVER = """
import sys
import dal_widgets as dal

if __name__ == "__main__":
    ds = dal.datasets.digits()
    print("started", flush=True)
    dal.simulate(ds, ["margin"], seeds=4, initial=20, batch=10, budget=60, device="cpu",
                 executor="processes", max_workers=2, results=sys.argv[1])
    print("finished", flush=True)
"""


@pytest.mark.slow
def test_a_driver_killed_mid_grid_resumes(ds, tmp_path):
    path = tmp_path / "grid.jsonl"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(_DRIVER))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes its workers too
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= 2:
            break
        assert child.poll() is None, child.stdout.read().decode()
        time.sleep(0.2)
    else:
        pytest.fail("no cell finished within 240 s")
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    kept = len(path.read_text().splitlines())
    assert 2 <= kept < 8  # killed mid-grid: some cells done, some not
    events = []
    kw = {"initial": 20, "batch": 10, "budget": 60, "device": "cpu"}
    resumed = dal.simulate(ds, ["margin"], seeds=4, results=path, on_cell=events.append, **kw)
    assert events[-1]["resumed"] == kept and events[-1]["done"] == 8 - kept
    ran = {(e["strategy"], e["seed"]) for e in events if e["state"] == "running"}
    assert len(ran) == 8 - kept
    fresh = dal.simulate(ds, ["margin"], seeds=4, **kw)
    assert curves(resumed) == curves(fresh)


@pytest.mark.slow
def test_compare_widget_draws_cells_from_workers(ds):
    w = dal.CompareWidget(ds, ["margin"], seeds=2, executor="processes", max_workers=2, **GRID)
    assert w.wait(300)
    assert w.error is None, w.error
    assert "cells: 4 of 4 done" in w.cells.value and "0 running" in w.cells.value
    assert {s["name"] for s in w.chart.series} == {"random", "margin"}
    assert w.progress.value == w.progress.max == 3 * 4  # every round of every cell arrived
    assert len(w.result.records) == 12


def test_compare_widget_shows_a_failed_cell(ds):
    w = dal.CompareWidget(
        ds, ["bald"], seeds=1, model=no_dropout_model, executor=ThreadPoolExecutor(2), **GRID
    )
    assert w.wait(300)
    assert "1 failed" in w.cells.value and "bald seed 0 failed" in w.cells.value
    assert any("bald seed 0" in e and "Traceback" in e for e in w.errors)
    assert w.result.failures and "random" in {s["name"] for s in w.chart.series}


@pytest.mark.slow
def test_an_encoder_grid_embeds_once_in_the_driver_and_runs_on_processes(ds, tmp_path):
    # With an encoder, the driver embeds the pool into the cache first; the workers read it.
    rng = np.random.default_rng(0)
    E = rng.normal(size=(len(ds), 24)).astype(np.float32) + ds.targets[:, None] * 0.5
    Ee = rng.normal(size=(ds.n_eval, 24)).astype(np.float32) + ds.y_eval[:, None] * 0.5
    enc = dal.encoders.precomputed(E, eval_embeddings=Ee)
    kw = {**GRID, "budget": 30}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = dal.simulate(ds, ["margin"], seeds=1, encoder=enc, **kw)
    finally:
        torch.set_num_threads(before)
    res = dal.simulate(ds, ["margin"], seeds=1, encoder=enc, executor="processes", **kw)
    assert res.failures == [] and curves(res) == curves(serial)
