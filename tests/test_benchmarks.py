"""The benchmark harness and BENCHMARKS.md rendering (benchmarks/_harness.py, run_all.py).

These run no benchmark: they build reports from made-up figures and check what the rendered
BENCHMARKS.md says about them (order, QUICK / PARTIAL marks, missed targets, escaping).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import _harness
        import label_efficiency
        import run_all

        yield _harness, run_all, label_efficiency
    finally:
        sys.path.remove(str(BENCH))


def _report(harness, tmp_path, name, *, quick=False, met=True, notes=()):
    report = harness.Report(
        name, f"Title of {name}", command=f"python {name}.py", quick=quick, results=tmp_path
    )
    report.table("figures", ["case", "ms"], [["a | b", 1.5], ["c", None]])
    report.target(f"{name} speed", 1.5, "< 2 ms", met)
    for n in notes:
        report.note(n)
    report.save()
    return report


def test_render_orders_variants_after_their_script_and_marks_runs(bench, tmp_path, capsys):
    harness, run_all, _ = bench
    _report(harness, tmp_path, "widgets")
    _report(harness, tmp_path, "label_efficiency_digits")
    _report(harness, tmp_path, "strategies", met=False)
    _report(harness, tmp_path, "label_efficiency", notes=["PARTIAL RUN: 3 of the 5 seeds"])
    _report(harness, tmp_path, "training", quick=True)
    _report(harness, tmp_path, "zzz_other")
    capsys.readouterr()

    docs = run_all.load_results(tmp_path)
    assert [d["name"] for d in docs] == [
        "label_efficiency",
        "label_efficiency_digits",
        "strategies",
        "training",
        "widgets",
        "zzz_other",
    ]
    text = run_all.render(docs)
    summary = text.split("## Summary")[1].split('<a id="label_efficiency">')[0]
    rows = {
        line.split("](#")[1].split(")")[0]: line for line in summary.splitlines() if "](#" in line
    }
    assert "**PARTIAL** (see notes)" in rows["label_efficiency"]
    assert "| full |" in rows["label_efficiency_digits"]
    assert "**QUICK**" in rows["training"]
    assert "0/1 met (NOT met: strategies speed)" in rows["strategies"]
    assert "1/1 met" in rows["widgets"]
    assert "QUICK RUN RESULTS: `training`" in text
    assert "No results yet for: `projection`, `map_browser`, `encoders`, `grid`, `team`." in text
    # A cell's pipe is escaped, so the table keeps its columns.
    assert "| a \\| b | 1.5 |" in text
    assert "**NOT met**" in text
    # The same files render the same text.
    assert run_all.render(run_all.load_results(tmp_path)) == text


def test_load_results_skips_files_that_are_not_reports(bench, tmp_path, capsys):
    harness, run_all, _ = bench
    _report(harness, tmp_path, "widgets")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"something": "else"}))
    docs = run_all.load_results(tmp_path)
    assert [d["name"] for d in docs] == ["widgets"]
    assert "skipping" in capsys.readouterr().err


def test_report_rejects_a_row_of_the_wrong_width(bench, tmp_path):
    harness, _, _ = bench
    report = harness.Report("x", "X", command="x", results=tmp_path)
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        report.table("t", ["a", "b", "c"], [[1, 2]])


def test_label_efficiency_quartiles_count_seeds_that_never_reach(bench):
    _, _, le = bench
    assert le.quartiles([60, 70, 80, 90, 100], 300) == "80 [70-90]"
    # Two of five seeds never reached: the median is the third value, the upper quartile is
    # "more than the budget", and the row says how many never did.
    assert le.quartiles([60, 70, 80, None, None], 300) == "80 [70->300], 2 of 5 seeds never"
    assert le.median_or_none([60, None, None]) is None
    assert le.median_or_none([60, 80, None]) == 80


def test_label_efficiency_names_its_results_by_dataset_and_schedule(bench):
    _, _, le = bench

    class Args:
        dataset, train_config, quick = "mnist", "tuned", False

    args = Args()
    assert le.report_name(args) == "label_efficiency"
    args.train_config = "default"
    assert le.report_name(args) == "label_efficiency_defaults"
    args.quick = True
    assert le.report_name(args) == "label_efficiency_defaults_quick"
    args.dataset, args.quick = "digits", False
    assert le.report_name(args) == "label_efficiency_digits"  # digits has one schedule
    args.cold_start = True
    assert le.report_name(args) == "label_efficiency_digits_coldstart"
    args.tag = "spread"  # a few rows beside the full table
    assert le.report_name(args) == "label_efficiency_digits_coldstart_spread"
    config = le.train_config("mnist", "", which="tuned")
    assert (config.steps, config.batch_size, config.min_epochs) == (300, 32, 100)
    from dal_widgets.training import TrainConfig

    assert le.train_config("mnist", "", which="default") == TrainConfig()
    assert le.train_config("mnist", "+pseudo", which="default").pseudo_labels == 0.95
    assert le.train_config("digits", "+spread").label_spreading
    assert [le.variant(n) for n in ("margin", "margin+pseudo", "auto+spread")] == [
        "",
        "+pseudo",
        "+spread",
    ]


def test_machine_counts_code_changes_as_dirty_but_not_benchmark_outputs(
    bench, tmp_path, monkeypatch
):
    harness, _, _ = bench
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "widgets.json").write_text("{}")
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(harness, "REPO", tmp_path)
    assert harness.machine()["dirty"] is False
    # A suite run rewrites its own outputs as it goes: still the committed code.
    (tmp_path / "benchmarks" / "results" / "widgets.json").write_text('{"a": 1}')
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks, again\n")
    assert harness.machine()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert harness.machine()["dirty"] is True


def test_label_efficiency_reports_where_stable_predictions_stop(bench):
    _, _, le = bench
    from dal_widgets.simulation import SimulationResult

    def run(seed, kappas):
        return [
            {
                "strategy": "m",
                "seed": seed,
                "round": i,
                "labels": 10 * (i + 1),
                "accuracy": 0.5 + 0.05 * i,
                "kappa": k,
            }
            for i, k in enumerate(kappas)
        ]

    records = run(0, [None, 0.9, 0.995, 0.995, 0.995, 0.99]) + run(1, [None, 0.5, 0.6, 0.7])
    res = SimulationResult(records=records, budget=60, initial=10)
    # Seed 0 is stable at round 4 (50 labels); seed 1 never is, which counts as more than
    # the budget, so the median of the two is too.
    assert le.stop_column("m", res.stopping(), records, 60) == (
        ">60 [50->60], 1 of 2 seeds never; accuracy there 0.700"
    )
    old = [{k: v for k, v in r.items() if k != "kappa"} for r in records]
    assert le.stop_column("m", SimulationResult(records=old).stopping(), old, 60).startswith("n/a")


def _run_quick(name, args, results):
    """Run benchmarks/<name>.py with ``args`` in a fresh process; its report, checked to be a
    quick run of that benchmark."""
    import subprocess

    out = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    doc = json.loads((results / f"{name}.json").read_text())
    assert doc["name"] == name and doc["quick"] is True
    return doc


@pytest.mark.slow
def test_encoders_benchmark_runs_quick_and_writes_its_report(tmp_path):

    args = ["--quick", "--images", "8", "--repeat", "1", "--fits", "3", "--labels", "3"]
    args += ["--pool", "2000", "--lazy-pool", "200", "--results", str(tmp_path)]
    doc = _run_quick("encoders", args, tmp_path)
    targets = {t["name"]: t for t in doc["targets"]}
    assert "embedding samples/s, cache / bare loop (medians)" in targets
    assert "head fit on 1,000 labels, D=1280, p95" in targets
    assert all(t["met"] is None for t in targets.values())  # a quick run judges nothing
    # The cache's embeddings are the bare loop's: same module, same preprocessed images.
    assert doc["data"]["embedding"]["max_abs_diff"] < 1e-4
    loops = doc["data"]["label_loops"]  # default threads, then 1 thread when more by default
    assert loops and all(r["total"]["n"] == 3 for r in loops)
    pool = doc["data"]["lazy_pool"]  # embedded from the files, the pixels never all loaded
    assert pool["n"] == 200 and pool["lazy"] is True and pool["peak_mib"] >= pool["base_mib"]
    for figure in doc["figures"]:
        assert (tmp_path / figure["path"]).is_file()


@pytest.mark.slow
def test_grid_benchmark_runs_quick_and_writes_its_report(tmp_path):

    pytest.importorskip("ray")
    doc = _run_quick("grid", ["--quick", "--results", str(tmp_path)], tmp_path)
    targets = {t["name"]: t for t in doc["targets"]}
    name = "speed-up of processes over serial, 2 cores (medians of 1)"  # --quick: once
    assert targets[name]["met"] is None  # not judged
    data = doc["data"]
    assert data["cells"] == 4 and len(data["cell_seconds"]) == 4 and data["repeat"] == 1
    assert all(len(runs) == 1 for runs in data["seconds"].values())
    assert data["ray_task"]["single"]["n"] == 10 and data["ray_task"]["batched_s"] > 0
    rows = doc["tables"][0]["rows"]
    assert [r[4] for r in rows] == [0, 0, 0, 0]  # no failed cells anywhere


@pytest.mark.slow
def test_team_benchmark_runs_quick_and_writes_its_report(tmp_path):
    import _pg

    if _pg.problem() is not None:
        if os.environ.get("DAL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"DAL_REQUIRE_POSTGRES=1 but PostgreSQL cannot run: {_pg.problem()}")
        pytest.skip(f"needs PostgreSQL: {_pg.problem()}")
    doc = _run_quick("team", ["--quick", "--results", str(tmp_path)], tmp_path)
    targets = {t["name"]: t for t in doc["targets"]}
    claim = targets["claim latency p95, 8 annotators (50 ms think time)"]
    assert claim["met"] is None  # not judged when quick
    assert targets["every item labeled exactly twice"]["met"] is True
    busy, paced = doc["data"]["busy"], doc["data"]["paced"]
    assert (busy["labels"], paced["labels"]) == (800, 200) and busy["rate"] > 0


def test_label_efficiency_encoder_variant_reports_beside_the_cnn(bench, monkeypatch):
    _, _, le = bench
    from types import SimpleNamespace

    import torch

    args = SimpleNamespace(
        dataset="mnist", train_config="tuned", quick=True, encoder="effnet-lite0"
    )
    assert le.report_name(args) == "label_efficiency_effnet_quick"
    args.quick = False
    assert le.report_name(args) == "label_efficiency_effnet"
    out = le.imagenet_normalize(torch.ones(2, 3, 4, 4))
    assert torch.allclose(out[:, 0], torch.full((2, 4, 4), (1 - 0.485) / 0.229))

    def run(name, seed, accs):
        return [
            dict(
                strategy=name,
                seed=seed,
                round=i,
                labels=20 + 10 * i,
                accuracy=a,
                kappa=None,
                train_s=0.1,
                infer_s=0.0,
                select_s=0.0,
                seconds=0.2,
            )
            for i, a in enumerate(accs)
        ]

    records = run("random", 0, [0.80, 0.85, 0.90, 0.92, 0.93])
    records += run("margin", 0, [0.80, 0.90, 0.93, 0.95, 0.96])
    monkeypatch.setattr(le, "plot_curves", lambda *a, **k: None)  # writes no figure
    monkeypatch.setattr(le, "cnn_table", lambda: ("the CNN's", dict(le.CNN_FALLBACK)))
    args.names, args.budget, args.seeds, args.jobs = ["random", "margin"], 60, 1, 2
    args.embedding = dict(
        encoder_id="effnet-lite0-x",
        dim=1280,
        rows=10000,
        seconds=600.0,
        rate=16.7,
        load_s=1.0,
        torch_threads=2,
        others_cpu_share=0.5,
        date="2026-12-02T08:00:00+00:00",
        read_s=2.0,
    )
    report = le.build_report(args, records, 12.0)
    beside = next(t for t in report.tables if t["caption"].startswith("Beside the from-scratch"))
    assert beside["rows"] == [
        ["random", "40", "90", ">60", "230", report.tables[0]["rows"][0][4], "0.9105"],
        ["margin", "30", "60", "50", "120", report.tables[0]["rows"][1][4], "0.9373"],
    ]
    # Judged only on AUBC against random: the published goals are the CNN protocol's.
    random_aubc = report.tables[0]["rows"][0][4]
    assert [t["name"] for t in report.targets] == [f"AUBC margin > random ({random_aubc})"]
    assert any(n.startswith("Embedding (effnet-lite0-x, D=1280)") for n in report.notes)


def test_label_efficiency_sklearn_baseline_is_a_resumable_row(bench, tmp_path):
    # Issue 16's baseline: k-means picks, label spreading, 5-NN; its cells sit in the grid
    # file beside the strategies' and come back as a row like theirs.
    import argparse

    _, _, le = bench
    args = argparse.Namespace(dataset="digits", root="", seeds=2, budget=40, names=[le.BASELINE])
    proto = {"initial": 20, "batch": 10}
    path = tmp_path / "g.grid.jsonl"
    le.sklearn_baseline(args, proto, path)
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["seed"] for e in entries] == [0, 1]
    records = le.grid_records(path, args)
    assert [r["labels"] for r in records if r["seed"] == 0] == [20, 30, 40]
    assert all(r["strategy"] == le.BASELINE for r in records)
    # It uses the pool: well above what 20-40 labels give a classifier alone on digits.
    assert min(r["accuracy"] for r in records if r["labels"] == 40) > 0.85
    le.sklearn_baseline(args, proto, path)  # both seeds done: nothing is added
    assert len(path.read_text().splitlines()) == 2
    args.budget = 30  # another protocol: new cells, and only they are read back
    le.sklearn_baseline(args, proto, path)
    assert {r["labels"] for r in le.grid_records(path, args)} == {20, 30}
