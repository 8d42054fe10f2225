"""The label store on a real PostgreSQL server (a throwaway cluster, see ``_pg.py``): the same
record as the SQLite store, one writer per project, errors that name the problem and never
the password, a server restart under a running store, copies between the two backends, and a
Session on it. Skipped without a server, failed when ``DAL_REQUIRE_POSTGRES=1`` (CI)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.store import (
    LabelStore,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    copy_store,
)
from dal_widgets.training import TrainConfig

HERE = Path(__file__).resolve().parent
CLASSES = ["cat", "dog", "owl"]


def pg(url, project="p", **kw):
    from dal_widgets.store import PostgresStore

    return PostgresStore(url, project=project, fingerprint="fp", classes=CLASSES, **kw)


def work(store):
    """The same actions on any store: labels, a relabel, marks, undo, a class, queries, rounds."""
    store.label([1, 2, "a.png"], ["cat", "dog", "owl"])
    store.mark([3, 4], "skip")
    store.label([3], ["dog"], annotator="bo")  # clears 3's skip mark in the same action
    store.label([1], ["owl"])  # a relabel keeps the earlier label in history
    store.mark([2], "flag")
    store.undo()  # the flag
    store.add_class("emu")
    store.record_query("margin", [5, 6, "b.png"], scores=[0.5, 0.25, 0.125], model_version=3)
    store.update_round(train_s=1.5, accuracy=0.75)
    store.label([5], ["emu"], source="oracle")
    store.unlabel([2])


def view(store):
    """Everything a store shows, without the times (each backend stamps its own)."""
    history = [{k: v for k, v in e.items() if k != "timestamp"} for e in store.history()]
    records = [{k: v for k, v in r.items() if k != "timestamp"} for r in store.records()]
    queries = [{k: v for k, v in q.items() if k != "timestamp"} for q in store.queries()]
    return {
        "labels": store.labels,
        "skip": store.marked("skip"),
        "flag": store.marked("flag"),
        "classes": store.classes,
        "round": store.round,
        "history": history,
        "records": records,
        "queries": queries,
        "rounds": [r.as_dict() for r in store.rounds()],
        "pending": store.pending(),
    }


def test_the_same_actions_give_the_same_record_as_sqlite_and_come_back_on_reopen(pg_url):
    from dal_widgets.store import PostgresStore

    lite = LabelStore(":memory:", fingerprint="fp", classes=CLASSES)
    server = pg(pg_url)
    work(lite)
    work(server)
    expected = view(lite)
    assert view(server) == expected
    assert expected["labels"] == {1: "owl", "a.png": "owl", 3: "dog", 5: "emu"}
    assert expected["skip"] == {4} and expected["flag"] == set()
    server.close()
    again = pg(pg_url)
    assert view(again) == expected  # a new connection reads everything back
    assert again.undo() == [2] and again.labels[2] == "dog"  # history continues
    again.close()
    reader = PostgresStore.open(pg_url, project="p")
    assert reader.read_only and reader.classes == [*CLASSES, "emu"]
    with pytest.raises(StoreError, match="read_only=True"):
        reader.label([9], ["cat"])
    reader.close()


def test_int_and_str_ids_stay_two_ids_and_projects_are_apart(pg_url):
    a = pg(pg_url, "a")
    a.label([7, "7"], ["cat", "dog"])
    b = pg(pg_url, "b")
    b.label([7], ["owl"])
    assert a.labels == {7: "cat", "7": "dog"} and b.labels == {7: "owl"}
    assert [e["sample_id"] for e in a.history()] == [7, "7"]
    for bad in ("", "two words", "x" * 51, "-dash", None):
        with pytest.raises(ValueError, match="'project'"):
            pg(pg_url, bad)
    a.close()
    b.close()


def test_one_writer_per_project(pg_url):
    """Another process holds the project: this one gets StoreLockedError naming it and may
    read beside it; in one process a newer store takes the project over."""
    code = (
        f"import sys, time; sys.path.insert(0, {str(HERE.parent)!r})\n"
        "from dal_widgets.store import PostgresStore\n"
        f"s = PostgresStore({pg_url!r}, project='p', fingerprint='fp', classes={CLASSES!r}, "
        "annotator='alice')\n"
        "s.label([1], ['cat']); print('ready', flush=True); time.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match="another session.*alice@"):
            pg(pg_url)
        beside = pg(pg_url, read_only=True)
        assert beside.labels == {1: "cat"}
        beside.close()
    finally:
        other.kill()
        other.wait()
    deadline = time.monotonic() + 10  # the server notices the killed client
    while True:
        try:
            first = pg(pg_url)
            break
        except StoreLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    closed = []
    first.add_close_callback(closed.append)
    second = pg(pg_url)
    assert first.closed and closed == ["taken over by a newer store on the same project"]
    with pytest.raises(StoreClosedError, match="newer store"):
        first.label([2], ["dog"])
    second.label([2], ["dog"])
    assert second.labels == {1: "cat", 2: "dog"}
    second.close()


def test_a_project_is_written_alone_or_by_a_team_never_both(pg_url):
    alone = pg(pg_url)
    with pytest.raises(StoreLockedError, match="by a session alone"):
        pg(pg_url, shared=True)
    alone.close()
    team = pg(pg_url, shared=True, annotator="ann")
    other = pg(pg_url, shared=True, annotator="bo")  # a team: many writers
    team.label([1], ["cat"])
    other.label([2], ["dog"])
    with pytest.raises(StoreLockedError, match="another session .*team"):
        pg(pg_url)
    team.close()
    other.close()
    pg(pg_url).close()  # the team gone, one may write alone again


def test_a_store_made_for_something_else_is_refused_and_the_writer_keeps_it(pg_url):
    import psycopg

    from dal_widgets.store import PostgresStore

    writer = pg(pg_url)
    writer.label([1], ["cat"])
    with pytest.raises(StoreMismatchError, match="another dataset"):
        PostgresStore(pg_url, project="p", fingerprint="other", classes=CLASSES)
    with pytest.raises(StoreMismatchError, match="classes"):
        PostgresStore(pg_url, project="p", fingerprint="fp", classes=["x", "y"])
    assert not writer.closed  # the refused ones did not take it over
    writer.label([2], ["dog"])
    with pytest.raises(StoreError, match="no project 'nope'"):
        PostgresStore.open(pg_url, project="nope")
    writer.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE \"dal_p\".meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer dal_widgets"):
        pg(pg_url)


def test_bad_urls_and_credentials_never_show_the_password(pg_cluster, pg_url, monkeypatch):
    secret = "hunter2-secret"
    with pytest.raises(ConnectionError) as err:
        pg(f"postgresql://postgres:{secret}@127.0.0.1:1/nodb?connect_timeout=2")
    assert secret not in str(err.value) and "***" in str(err.value)
    for wrong in (f"mysql://root:{secret}@host/db", f"root:{secret}@host/db"):
        with pytest.raises(ValueError, match="'url'") as err:
            pg(wrong)
        assert secret not in str(err.value)
    monkeypatch.delenv("DAL_POSTGRES_URL", raising=False)
    with pytest.raises(ValueError, match="DAL_POSTGRES_URL"):
        pg(None)
    monkeypatch.setenv("DAL_POSTGRES_URL", pg_url)
    store = pg("postgresql://")  # the URL from the environment
    store.label([1], ["cat"])
    shown = repr(store)
    assert "project='p'" in shown and "labels=1" in shown
    store.close()
    from dal_widgets._pgurl import Secret

    odd = Secret("postgresql://alice:p@ss:w0rd%40x@db/labels", "url", "test")
    assert "p@ss" not in repr(odd) and "w0rd" not in repr(odd) and "***" in repr(odd)
    assert odd.hide("could not connect with p@ss:w0rd@x") == "could not connect with ***"
    with_password = pg_url.replace("postgres@", f"postgres:{secret}@")  # trust: accepted
    store = pg(with_password)
    assert secret not in repr(store) and secret not in store.path
    store.close()


def test_bad_credentials_are_refused_without_showing_the_password(pg_cluster, pg_url):
    db = pg_url.split("?")[0].rsplit("/", 1)[1]
    good = pg_cluster.password_url(db, "right-secret-1")
    store = pg(good)  # the right password: the project is made and used
    store.label([1], ["cat"])
    assert "right-secret-1" not in repr(store) and "right-secret-1" not in store.path
    store.close()
    bad = good.replace("right-secret-1", "wrong-secret-2")
    with pytest.raises(ConnectionError, match="password authentication failed") as err:
        pg(bad)
    assert "wrong-secret-2" not in str(err.value) and "***" in str(err.value)
    ds = dal.datasets.from_arrays(np.zeros((4, 2)), y=np.array(["a", "b"] * 2), name="tiny")
    with pytest.raises(ConnectionError) as err:
        dal.Session(ds, store=bad, project="p", device="cpu")
    assert "wrong-secret-2" not in str(err.value)


def test_a_server_restart_loses_no_acknowledged_label(pg_cluster, pg_url):
    store = pg(pg_url, reconnect_seconds=30)
    store.label([1], ["cat"])
    pg_cluster.restart()  # immediate: the connection breaks under the store
    store.label([2], ["dog"])  # reconnects, takes the lock again, then writes
    assert store.labels == {1: "cat", 2: "dog"}
    store.reconnect_seconds = 0.5
    pg_cluster.stop("immediate")
    try:
        with pytest.raises(StoreError, match="could not reach it again"):
            store.label([3], ["owl"])
    finally:
        pg_cluster.start()
    assert store.labels == {1: "cat", 2: "dog"}
    store.label([3], ["owl"])  # back: reconnected, state re-read from the server
    store.close()
    assert pg(pg_url, read_only=True).labels == {1: "cat", 2: "dog", 3: "owl"}


def test_copies_between_sqlite_and_postgres_keep_every_action(pg_url, tmp_path):
    from dal_widgets.store import PostgresStore

    lite = LabelStore(str(tmp_path / "a.db"), fingerprint="fp", classes=CLASSES)
    work(lite)
    expected = view(lite)
    server = copy_store(lite, pg_url, project="moved")
    assert isinstance(server, PostgresStore) and view(server) == expected
    assert [e["timestamp"] for e in server.history()] == [e["timestamp"] for e in lite.history()]
    back = server.backup(tmp_path / "b.db")
    server.label([8], ["cat"])  # new action ids follow the copied ones
    assert server.history(8)[0]["action_id"] == max(e["action_id"] for e in lite.history()) + 1
    server.close()
    copy = LabelStore.open(back)
    assert view(copy) == expected
    copy.close()
    with pytest.raises(StoreError, match="new store only"):
        copy_store(lite, pg_url, project="moved")
    with pytest.raises(ValueError, match="'project'"):
        copy_store(lite, pg_url)
    # An undo in the copy reverts the same action as in the original.
    again = PostgresStore(pg_url, project="moved", fingerprint="fp", classes=CLASSES)
    again.undo()  # the label of 8
    assert again.undo() == lite.undo()
    assert again.labels == lite.labels
    again.close()
    lite.close()


def test_a_session_on_postgres_labels_trains_and_brings_its_model_back(
    pg_url, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    X = np.array([[0, 0], [4, 0], [0, 4]], float)[y] + rng.normal(scale=0.5, size=(120, 2))
    ds = dal.datasets.from_arrays(X, y=np.array(CLASSES)[y], holdout=0.25, name="blobs")
    fast = TrainConfig(steps=40, batch_size=32)
    with pytest.raises(ValueError, match="'project'"):
        dal.Session(ds, store=pg_url, device="cpu")
    with pytest.raises(ValueError, match="'project'.*file store"):
        dal.Session(ds, store=str(tmp_path / "x.db"), project="p", device="cpu")
    s = dal.Session(ds, store=pg_url, project="blobs", device="cpu", train_config=fast)
    ids = s.query(12)
    s.label(ids, ds.targets[ds.positions(ids)].tolist())
    s.train(block=True)
    probs = s.predict_proba(ds.ids[:5])
    side = s.store.side_dir
    s.close()
    assert (side / "model.pt").is_file() and str(side).startswith(str(tmp_path / "cache"))
    again = dal.Session(ds, store=pg_url, project="blobs", device="cpu", train_config=fast)
    names = [ds.classes[t] for t in ds.targets[ds.positions(ids)]]
    assert again.labels == dict(zip(ids, names))
    assert again.round == 1 and again.model_version.n_labels == 12 and not again.training
    np.testing.assert_allclose(again.predict_proba(ds.ids[:5]), probs, atol=1e-6)
    again.close()
