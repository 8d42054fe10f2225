"""Sessions labeling as a team on a real PostgreSQL server (``Session(team=...)``, see
``dal_widgets/_teamwork.py``): claims never overlap beyond ``overlap``, everyone sees the
others' labels, one session trains and the others follow its model, undo is per annotator,
the training label follows the rule, and the trainer role moves when its session closes.
Skipped without a server, failed when ``DAL_REQUIRE_POSTGRES=1`` (CI)."""

from __future__ import annotations

import time

import _pg
import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.training import TrainConfig

FAST = TrainConfig(steps=40, batch_size=32)
CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def ds():
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    X = np.array([[0, 0], [4, 0], [0, 4]], float)[y] + rng.normal(scale=0.5, size=(150, 2))
    return dal.datasets.from_arrays(X, y=np.array(CLASSES)[y], holdout=0.2, name="blobs")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the shared model folder


def member(ds, url, who, **team):
    options = {"lease_seconds": 3.0, **team}
    return dal.Session(
        ds, store=url, project="blobs", annotator=who, device="cpu", train_config=FAST,
        team=dal.Team(**options),
    )  # fmt: skip


def truth(ds, ids):
    return [ds.classes[t] for t in ds.targets[ds.positions(ids)]]


def until(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_annotators_split_the_pool_and_one_trains_for_both(ds, pg_url):
    alice = member(ds, pg_url, "alice")
    bob = member(ds, pg_url, "bob")
    try:
        assert alice.team.is_trainer and not bob.team.is_trainer
        a, b = alice.query(6), bob.query(6)
        assert len(a) == len(b) == 6 and not set(a) & set(b)  # overlap 1: never the same
        assert sorted(bob.pending) == sorted(b)
        alice.label(a, truth(ds, a))
        bob.label(b, truth(ds, b))
        until(lambda: len(alice.labels) == 12 and len(bob.labels) == 12)
        assert alice.labels == bob.labels == dict(zip(a + b, truth(ds, a + b)))
        assert bob.pending == [] and sorted(bob.done_labels) == sorted(b)
        with pytest.raises(RuntimeError, match="another session of the team trains"):
            bob.train()
        alice.train(block=True)  # the trainer fits, saves, and ranks the queue

        def same_model():  # bob follows its newest model (an automatic fit may come first)
            if alice.training or bob.model_version is None:
                return False
            theirs, mine = alice.predict_proba(ds.ids[:4]), bob.predict_proba(ds.ids[:4])
            return np.allclose(theirs, mine, atol=1e-6)

        until(same_model)
        assert bob.explain([ds.ids[0]])[0]["predicted"] in CLASSES  # suggestions for bob
        # Bob's undo takes back his own newest action, never alice's.
        assert sorted(bob.undo()) == sorted(b)
        until(lambda: len(alice.labels) == 6)
        assert set(alice.labels) == set(a)
        assert set(b) <= set(bob.query(200))  # his items are free again, for him too
    finally:
        bob.close()
        alice.close()


def test_overlap_two_the_rule_decides_and_an_adjudicator_settles_a_tie(ds, pg_url):
    alice = member(ds, pg_url, "alice", overlap=2, rule="majority")
    bob = member(ds, pg_url, "bob", overlap=2, rule="majority")
    try:
        until(lambda: _pg.ranked(pg_url))
        a, b = alice.query(4), bob.query(4)
        assert a == b  # overlap 2: both get the best items
        alice.label(a, ["cat", "dog", "owl", "cat"])
        assert alice.labels == {} and alice.done_labels == dict(zip(a, ["cat", "dog", "owl", "cat"]))
        assert sorted(bob.pending) == sorted(b)  # alice's labels do not finish them for bob
        bob.label(b, ["cat", "dog", "dog", "cat"])
        until(lambda: len(alice.labels) == 3)
        assert alice.labels == {a[0]: "cat", a[1]: "dog", a[3]: "cat"}  # a[2] is a tie
        assert alice.disagreements() == {a[2]: [("alice", "owl"), ("bob", "dog")]}
        bob.adjudicate(a[2], "owl")
        until(lambda: alice.labels.get(a[2]) == "owl")
        assert alice.disagreements() == {}
        assert bob.undo() == [a[2]]  # the adjudicator takes the decision back: a tie again
        until(lambda: a[2] not in alice.labels)
        assert list(alice.disagreements()) == [a[2]]
        bob.adjudicate(a[2], "owl")
        until(lambda: alice.labels.get(a[2]) == "owl")
        # A relabel replaces alice's label; her undo brings the earlier one back.
        alice.label([a[0]], ["dog"])
        assert a[0] not in alice.labels  # dog against bob's cat: a tie, majority waits
        alice.undo()
        assert alice.labels[a[0]] == "cat"
        assert alice.done_labels[a[0]] == "cat"
        history = [e for e in alice.store.history(a[0]) if e["field"].startswith("vote:")]
        assert [(e["field"], e["new"]) for e in history] == [
            ("vote:alice", "cat"), ("vote:bob", "cat"), ("vote:alice", "dog"),
            ("vote:alice", "cat"),
        ]  # fmt: skip
    finally:
        bob.close()
        alice.close()


def test_the_trainer_role_moves_when_its_session_closes(ds, pg_url, tmp_path):
    shared = tmp_path / "share"  # a folder all machines can read: the models go there
    alice = member(ds, pg_url, "alice", model_dir=shared)
    bob = member(ds, pg_url, "bob", model_dir=shared)
    carol = member(ds, pg_url, "carol", trainer=False, model_dir=shared)
    try:
        ids = alice.query(9)
        alice.label(ids, truth(ds, ids))
        assert alice.team.is_trainer
        alice.close()
        until(lambda: bob.team.is_trainer)  # within a heartbeat (1 s here)
        assert not carol.team.is_trainer
        until(lambda: bob.model_version is not None)  # it fits the labels it found
        until(lambda: carol.model_version is not None)
        assert (shared / "model.pt").is_file()
    finally:
        carol.close()
        bob.close()
        alice.close()


def test_a_team_session_that_cannot_join_closes_what_it_opened(ds, pg_url):
    import threading

    from dal_widgets.store import PostgresStore

    alice = member(ds, pg_url, "alice", overlap=2)
    try:
        with pytest.raises(ValueError, match="overlap=2"):
            member(ds, pg_url, "bob", overlap=3)  # the project keeps its overlap
        with pytest.raises(ValueError, match="read_only"):
            dal.Session(ds, store=pg_url, project="blobs", read_only=True, team=dal.Team())
        alone = PostgresStore(pg_url, project="other", fingerprint=ds.fingerprint,
                              classes=ds.classes)  # fmt: skip
        with pytest.raises(ValueError, match="shared PostgreSQL store"):
            dal.Session(ds, store=alone, device="cpu", team=dal.Team())
        assert alone.closed

        def polls():  # a closed store's poll thread ends within a poll (0.5 s)
            return [t for t in threading.enumerate() if t.name.startswith("dal-store-poll")]

        until(lambda: len(polls()) == 1, timeout=5)  # alice's only
    finally:
        alice.close()


def test_team_sessions_need_a_server_and_single_label_data(ds, tmp_path):
    with pytest.raises(ValueError, match="PostgreSQL"):
        dal.Session(ds, store=str(tmp_path / "a.db"), device="cpu", team=dal.Team())
    with pytest.raises(TypeError, match="'team'"):
        dal.Session(ds, store=None, device="cpu", team={"overlap": 2})
    with pytest.raises(ValueError, match="'rule'"):
        dal.Session(ds, store=None, device="cpu", team=dal.Team(rule="vote"))
    solo = dal.Session(ds, store=None, device="cpu")
    with pytest.raises(RuntimeError, match="team project"):
        solo.disagreements()
    solo.close()


def test_the_labeler_adjudicates_a_disagreement(ds, pg_url):
    from dal_widgets.widgets._label_tiles import tile_key

    alice = member(ds, pg_url, "alice", overlap=2)
    bob = member(ds, pg_url, "bob", overlap=2)
    try:
        until(lambda: _pg.ranked(pg_url))
        ids = alice.query(2)
        alice.label(ids, ["cat", "dog"])
        assert bob.query(2) == ids
        bob.label(ids, ["owl", "dog"])
        w = dal.LabelingWidget(alice, batch_size=4, prefetch=False)
        assert w.adjudicate() == [ids[0]]
        assert w.review_info["adjudicate"] and "a class key decides" in w.message
        assert w.items[0]["votes"] == "alice: cat · bob: owl"
        key = tile_key(ids[0])
        assert w.states[key]["status"] == "pending"  # alice's own label does not decide it
        w.label("owl")
        assert alice.labels[ids[0]] == "owl" and w.states[key]["status"] == "done"
        assert alice.disagreements() == {}
        until(lambda: bob.labels.get(ids[0]) == "owl")
        assert w.adjudicate() == [] and w.message == "No disagreements to adjudicate."
        solo = dal.Session(ds, store=None, device="cpu")
        with pytest.raises(RuntimeError, match="team project"):
            dal.LabelingWidget(solo, prefetch=False).adjudicate()
        solo.close()
    finally:
        bob.close()
        alice.close()


def _team_cells(url: str, who: str) -> list[str]:
    setup = (
        "import json\n"
        "import dal_widgets as dal\n"
        "ds = dal.datasets.digits()\n"
        f"def member(project, overlap, who={who!r}):\n"
        f"    return dal.Session(ds, store={url!r}, project=project, annotator=who,\n"
        "                       device='cpu', retrain='manual', team=dal.Team(overlap=overlap))\n"
        "s = member('split', 1)\n"
        "w = dal.LabelingWidget(s, batch_size=6, prefetch=False)\n"
        "w"
    )
    second = "d = member('double', 2)\nwd = dal.LabelingWidget(d, batch_size=6, prefetch=False)\nwd"
    return [setup, second]


@pytest.mark.e2e
def test_two_notebooks_label_one_pool_and_adjudicate_by_keyboard(lab, pg_url):
    """Two JupyterLab notebooks (two kernels: alice and bob) on one PostgreSQL project: their
    batches never overlap, bob's keyboard labels reach alice's kernel, and alice settles a
    disagreement on an overlap-2 project by keyboard in the adjudication mode."""
    import json

    from _lab import wait_until
    from playwright.sync_api import expect

    def run(code, who):
        return lab.execute(code, f"{who}.ipynb")

    app_cell = "app = dal.App(s, batch_size=6, map_method='pca')\napp"
    page_a = lab.open_notebook([*_team_cells(pg_url, "alice"), app_cell], name="alice.ipynb")
    page_b = lab.open_notebook(_team_cells(pg_url, "bob"), name="bob.ipynb", workspace="bob")

    def shown(page, nth):
        tiles = page.locator(".dal-labeler").nth(nth).locator(".dal-tile[data-sample-id]")
        expect(tiles).to_have_count(6)
        return [tiles.nth(i).get_attribute("data-sample-id") for i in range(6)]

    mine, theirs = shown(page_a, 0), shown(page_b, 0)
    assert not set(mine) & set(theirs)  # neither is shown the other's leased items
    truth = json.loads(
        run("print(json.dumps([ds.classes[ds.targets[ds.positions([i])[0]]] "
            "for i in w.batch_ids]))", "bob")
    )  # fmt: skip
    page_b.locator(".dal-labeler").nth(0).locator(".dal-progress-text").click()
    for key in truth:  # digits: the key is the class name
        page_b.keyboard.press(key)
        page_b.wait_for_timeout(150)

    def seen_by_alice():
        return json.loads(run("print(json.dumps(sorted(map(str, s.labels))))", "alice"))

    wait_until(lambda: seen_by_alice() == sorted(theirs), timeout=20,
               what="bob's labels in alice's kernel", details=seen_by_alice)  # fmt: skip

    # The overlap-2 project: both label alice's first tile, differently.
    first = json.loads(run("print(json.dumps(wd.batch_ids[0]))", "alice"))
    run(f"d.label([{first}], ['3'])", "alice")
    run(f"d.label([{first}], ['5'])", "bob")  # a free slot: no claim needed
    assert json.loads(run("print(json.dumps(wd.adjudicate()))", "alice")) == [first]
    second = page_a.locator(".dal-labeler").nth(1)
    expect(second.locator(".dal-votes")).to_have_text("alice: 3 · bob: 5")
    expect(second.locator(".dal-votes-line")).to_contain_text("a class key decides")
    for width, height in ((1280, 800), (1920, 1080)):
        page_a.set_viewport_size({"width": width, "height": height})
        second.scroll_into_view_if_needed()
        lab.save_screenshot(page_a, f"team-adjudicate-{width}x{height}")
    second.locator(".dal-progress-text").click()
    page_a.keyboard.press("5")

    def decided():
        return run(f"print(d.labels.get({first}), d.disagreements())", "alice").strip()

    wait_until(lambda: decided() == "5 {}", timeout=20, what="the decision", details=decided)
    expect(second.locator(".dal-tile[data-status='done'] .dal-badge").first).to_contain_text("5")
    wait_until(
        lambda: run(f"print(d.labels.get({first}))", "bob").strip() == "5",
        timeout=20, what="the decision in bob's kernel",
    )  # fmt: skip
    # The App of alice's first session: its team panel counts bob's labels.
    panel = page_a.locator(".dal-app .dal-team")
    expect(panel).to_contain_text("bob")
    expect(panel).to_contain_text("trains: dal_widgets alice@")
    panel.scroll_into_view_if_needed()
    lab.save_screenshot(page_a, "team-app-panel-1920x1080")


def test_a_team_session_survives_a_server_restart_and_heals_a_half_done_label(
    ds, pg_cluster, pg_url, monkeypatch
):
    from dal_widgets.store import StoreError

    alice = member(ds, pg_url, "alice")
    watcher = member(ds, pg_url, "bob")  # makes no call: only its poll thread reads
    heard: list = []
    watcher.on("labeled", lambda ids, **kw: heard.extend(ids))
    try:
        ids = alice.query(4)
        names = truth(ds, ids)
        alice.label(ids[:2], names[:2])
        pg_cluster.restart()  # immediate: every connection breaks under the session
        alice.label(ids[2:3], names[2:3])  # the queue retries, the store reconnects
        assert alice.labels == dict(zip(ids[:3], names[:3]))
        until(lambda: watcher.labels == alice.labels)  # its poll reconnected by itself
        until(lambda: set(ids[:3]) <= set(heard))
        # The vote is committed, then the event log's record fails (the server went away
        # between them): label() raises, and the same label again heals the training label.
        real = alice.store.team_record

        def fail(*args, **kw):
            raise StoreError("the connection broke (simulated)")

        monkeypatch.setattr(alice.store, "team_record", fail)
        with pytest.raises(StoreError, match="simulated"):
            alice.label(ids[3:], names[3:])
        assert ids[3] in alice.team.queue.mine() and ids[3] not in alice.labels
        monkeypatch.setattr(alice.store, "team_record", real)
        alice.label(ids[3:], names[3:])
        assert alice.labels == dict(zip(ids, names))
        # Or the kernel dies there: the next session of the annotator heals it when it opens.
        more = alice.query(1)
        monkeypatch.setattr(alice.store, "team_record", fail)
        with pytest.raises(StoreError, match="simulated"):
            alice.label(more, truth(ds, more))
        alice.close()
        alice = member(ds, pg_url, "alice")
        assert alice.labels == dict(zip(ids + more, names + truth(ds, more)))
    finally:
        watcher.close()
        alice.close()


def test_items_the_model_is_unsure_of_ask_for_more_labels(ds, pg_url):
    import psycopg

    alice = member(ds, pg_url, "alice", unsure_extra=1, unsure_below=1.0)  # below certain
    bob = member(ds, pg_url, "bob", unsure_extra=1, unsure_below=1.0)
    try:
        first = alice.query(9)
        alice.label(first, truth(ds, first))
        assert alice.labels == dict(zip(first, truth(ds, first)))  # overlap 1: decided at once

        def asking_two():
            with psycopg.connect(pg_url) as conn:
                return conn.execute(
                    "SELECT count(*) FROM dal_items WHERE needed = 2"
                ).fetchone()[0]

        alice.train(block=True)  # the trainer ranks with its model, every item but 9
        rest = [i for i in ds.ids.tolist() if i not in alice.labels]
        unsure = [i for i, p in zip(rest, alice.predict_proba(rest).max(1)) if p < 1.0]
        until(lambda: asking_two() == len(unsure) > 0)
        item = [unsure[0]]
        alice.label(item, truth(ds, item))
        assert item[0] not in alice.labels  # majority waits for the second label now
        assert item[0] in bob.query(200)  # and bob is served it
        bob.label(item, truth(ds, item))
        until(lambda: alice.labels.get(item[0]) == truth(ds, item)[0])
    finally:
        bob.close()
        alice.close()
    with pytest.raises(ValueError, match="'unsure_below'"):
        dal.Team(unsure_below=2.0).validated("Session")
