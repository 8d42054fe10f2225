"""The App's team panel on a real PostgreSQL server: counts, pace, agreement (equal to
``dal.agreement`` over the team's labels), the adjudication queue and who trains; names
escaped. Skipped without a server, failed when ``DAL_REQUIRE_POSTGRES=1`` (CI)."""

from __future__ import annotations

import time
from pathlib import Path

import _pg
import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.training import TrainConfig

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def ds():
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    X = np.array([[0, 0], [4, 0], [0, 4]], float)[y] + rng.normal(scale=0.5, size=(90, 2))
    return dal.datasets.from_arrays(X, y=np.array(CLASSES)[y], name="blobs")


def member(ds, url, who):
    return dal.Session(
        ds, store=url, project="p", annotator=who, device="cpu", retrain="manual",
        train_config=TrainConfig(steps=20), team=dal.Team(overlap=2, lease_seconds=3),
    )  # fmt: skip


def test_the_team_panel_counts_paces_and_agreement(ds, pg_url, tmp_path, monkeypatch):
    from dal_widgets.widgets.team_panel import TeamPanel, team_html

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    alice, eve = member(ds, pg_url, "alice"), member(ds, pg_url, "<b>eve</b>")
    try:
        deadline = time.monotonic() + 10
        while not _pg.ranked(pg_url):  # claims made from now on follow one order
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ids = alice.query(6)
        assert eve.query(6) == ids
        alice.label(ids, ["cat", "dog", "owl", "cat", "dog", "owl"])
        eve.label(ids[:4], ["cat", "dog", "owl", "dog"])  # one disagreement
        panel = TeamPanel(alice)
        facts = panel.facts()
        assert [(r["annotator"], r["labels"]) for r in facts["stats"]] == [
            ("<b>eve</b>", 4), ("alice", 6),
        ]  # fmt: skip
        assert all(r["per_minute"] > 0 for r in facts["stats"])
        expected = dal.agreement(alice.team.queue.labels())
        assert facts["agreement"].pairs == expected.pairs and expected.pairs[0]["items"] == 4
        assert facts["disagreements"] == 1 and facts["remaining"] == len(ds) - 4
        assert facts["trainer"].startswith("dal_widgets alice@")
        page = team_html(facts)
        assert "&lt;b&gt;eve&lt;/b&gt;" in page and "<b>eve</b>" not in page
        assert "1 disagreement to adjudicate" in page and "alice (you)" in page
        assert f"{expected.pairs[0]['kappa']:.2f}" in page
        deadline = time.monotonic() + 10  # the panel's own thread draws it
        while "disagreement" not in panel.widget.value:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        panel.close()
        app = dal.App(alice, map_method="pca")
        assert app.team_panel is not None and app.export_dir == Path(".")
        app.close()
        solo = dal.Session(ds, store=None, device="cpu")
        assert dal.App(solo, map_method="pca").team_panel is None
        with pytest.raises(ValueError, match="'session'"):
            TeamPanel(solo)
        solo.close()
    finally:
        eve.close()
        alice.close()
