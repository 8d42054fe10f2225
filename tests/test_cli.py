from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dal_widgets", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )


def test_help_documents_the_options():
    out = run("demo", "--help")
    assert out.returncode == 0
    for opt in (
        "--dataset",
        "--strategies",
        "--budget",
        "--seeds",
        "--out",
        "--initial",
        "--batch",
    ):
        assert opt in out.stdout


def test_no_command_prints_help():
    out = run()
    assert out.returncode == 2 and "demo" in out.stdout


@pytest.mark.slow
def test_demo_prints_a_table_and_writes_a_report(tmp_path):
    report = tmp_path / "r.html"
    out = run(
        "demo", "--rounds", "2", "--steps", "60", "--strategies", "random,entropy",
        "--initial", "20", "--encoder", "none", "--no-label-spreading", "--no-baseline",
        "--out", str(report), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["labels", "random", "entropy"]
    )
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [r[0] for r in rows] == ["20", "30", "40"]
    assert all(0.0 < float(v) <= 1.0 for r in rows for v in r[1:])
    html = report.read_text()
    assert "plotly" in html and "Learning curves" in html and "AUBC" in html
    assert "sklearn-spreading" not in out.stdout  # --no-baseline


@pytest.mark.slow
def test_demo_default_pretrains_on_the_pool_once(tmp_path):
    """The default demo: a SimCLR encoder pretrained on digits (cached), auto and random with
    label spreading; a second run finds the encoder in the cache."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ("demo", "--rounds", "2", "--pretrain-epochs", "3", "--out", "")
    out = run(*args, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "pretraining SelfSupervisedEncoder('simclr', epochs=3" in out.stdout
    assert list((tmp_path / "cache" / "dal_widgets" / "pretrained").glob("*/encoder.pt"))
    lines = out.stdout.splitlines()
    # From no labels (the strategy picks the first batch), beside the scikit-learn baseline.
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["labels"])
    assert lines[header].split() == ["labels", "random", "auto", "sklearn-spreading"]
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [r[0] for r in rows] == ["10", "20"]
    assert all(0.0 < float(v) <= 1.0 for r in rows for v in r[1:])
    again = run(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "pretraining" not in again.stdout


def test_bad_options_are_clear():
    out = run("demo", "--strategies", "entropi", "--out", "")
    assert out.returncode == 2 and "Did you mean 'entropy'" in out.stderr
    out = run("demo", "--dataset", "cifar", "--out", "")
    assert out.returncode == 2 and "'--dataset'" in out.stderr
    out = run("demo", "--dataset", "mnist:/nonexistent", "--out", "")
    assert out.returncode == 2 and "never downloads" in out.stderr
