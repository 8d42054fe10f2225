from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from dal_widgets.store import (
    LabelStore,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)

CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "labels.db")


def open_store(path, **kw):
    return LabelStore(
        path,
        fingerprint=kw.pop("fingerprint", "fp1"),
        classes=kw.pop("classes", CLASSES),
        dataset_name="toy",
        **kw,
    )


def test_label_relabel_and_history(path):
    s = open_store(path, annotator="ann")
    s.label([1, 2], ["cat", "dog"])
    s.label([1], ["eel"], source="suggestion")
    assert s.labels == {1: "eel", 2: "dog"}
    hist = s.history(1)
    assert [(h["old"], h["new"], h["source"]) for h in hist] == [
        (None, "cat", "human"),
        ("cat", "eel", "suggestion"),
    ]
    assert hist[0]["annotator"] == "ann" and hist[0]["timestamp"].endswith("+00:00")


def test_undo_is_a_stack_and_restores_multi_sample_actions(path):
    s = open_store(path)
    s.label([1, 2, 3], ["cat", "dog", "eel"])
    s.label([2], ["cat"])
    assert s.undo() == [2]
    assert s.labels == {1: "cat", 2: "dog", 3: "eel"}
    assert sorted(s.undo()) == [1, 2, 3]
    assert s.labels == {}
    assert s.undo() is None
    # undo is recorded, history is never rewritten
    kinds = [h["kind"] for h in s.history()]
    assert kinds.count("undo") == 4 and kinds.count("label") == 4


def test_undo_restores_round_and_source_of_the_earlier_label(path):
    s = open_store(path)
    s.label([7], ["cat"], source="oracle")
    s.begin_round()
    s.label([7], ["dog"])
    s.undo()
    (rec,) = s.records()
    assert rec["label"] == "cat" and rec["source"] == "oracle" and rec["round"] == 0


def test_marks_and_label_clears_skip(path):
    s = open_store(path)
    s.mark([4], "skip")
    s.mark([5], "flag")
    assert s.marked("skip") == {4} and s.marked("flag") == {5}
    s.label([4], ["dog"])
    assert s.marked("skip") == set()
    s.undo()
    assert s.marked("skip") == {4} and 4 not in s.labels


def test_resume_after_reopen(path):
    s = open_store(path)
    s.label(["a", "b"], ["cat", "dog"])
    r = s.begin_round()
    s.log_query("entropy", ["c", "d"], scores=[0.9, 0.8], model_version=3)
    s.update_round(accuracy=0.5)
    s.close()
    again = open_store(path)
    assert again.labels == {"a": "cat", "b": "dog"}
    assert again.round == r == 1
    q = again.queries()[-1]
    assert q["ids"] == ["c", "d"] and q["scores"] == [0.9, 0.8] and q["model_version"] == 3
    assert again.rounds() == [{"round": 1, "accuracy": 0.5}]
    assert again.undo() == ["a", "b"]  # undo works across sessions


def test_int_and_str_ids_keep_their_type(path):
    s = open_store(path)
    s.label([1, "1"], ["cat", "dog"])
    s.close()
    assert open_store(path).labels == {1: "cat", "1": "dog"}


def test_export_csv_jsonl_and_dataframe(path, tmp_path):
    s = open_store(path, annotator="me")
    s.label([3, 1], ["dog", "cat"], source="oracle")
    with open(s.export(tmp_path / "out.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["sample_id"], r["label"], r["source"], r["annotator"]) for r in rows] == [
        ("3", "dog", "oracle", "me"),
        ("1", "cat", "oracle", "me"),
    ]
    lines = (
        (tmp_path / "out.jsonl").read_text().splitlines()
        if s.export(tmp_path / "out.jsonl")
        else []
    )
    assert json.loads(lines[0])["sample_id"] == 3
    df = s.to_dataframe()
    assert list(df["label"]) == ["dog", "cat"] and str(df["timestamp"].dtype).startswith(
        "datetime64"
    )
    with pytest.raises(ValueError, match="'format'"):
        s.export(tmp_path / "out.xlsx")


def test_mismatched_dataset_and_classes(path):
    open_store(path).close()
    with pytest.raises(StoreMismatchError, match="belongs to another dataset"):
        open_store(path, fingerprint="other")
    with pytest.raises(StoreMismatchError, match="classes"):
        open_store(path, classes=["dog", "cat", "eel"])


def test_added_class_persists_and_extends(path):
    s = open_store(path)
    s.add_class("fox")
    s.label([1], ["fox"])
    s.close()
    again = open_store(path)  # the dataset's classes are a prefix of the store's
    assert again.classes == [*CLASSES, "fox"] and again.labels == {1: "fox"}
    with pytest.raises(ValueError, match="exists already"):
        again.add_class("cat")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.label([1], ["wolf"]), "class names"),
        (lambda s: s.label([1, 2], ["cat"]), "one label per id"),
        (lambda s: s.label([1, 1], ["cat", "cat"]), "must not repeat"),
        (lambda s: s.label([1.5], ["cat"]), "int or str"),
        (lambda s: s.label([], []), "at least one"),
        (lambda s: s.mark([1], "star"), "'field'"),
        (lambda s: s.label([1], ["cat"], source="robot"), "'source'"),
    ],
)
def test_bad_writes_name_the_parameter(path, call, match):
    s = open_store(path)
    with pytest.raises((ValueError, TypeError), match=match):
        call(s)
    assert s.labels == {}


def test_unwritable_and_bad_paths(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "missing" / "x.db"))
    with pytest.raises(StoreError, match="is a folder"):
        open_store(str(tmp_path))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite"):
        open_store(str(junk))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(StoreError, match="not a dal_widgets label store"):
        open_store(str(other))


def test_unwritable_location():
    # /proc refuses new files even to root, so this works whoever runs the tests.
    with pytest.raises(StoreError, match="/proc/labels.db"):
        open_store("/proc/labels.db")


def test_failed_commit_keeps_memory_and_disk_consistent(path, monkeypatch):
    s = open_store(path)
    s.label([1], ["cat"])
    # Simulate a full disk at commit time: nothing of the action may appear anywhere.
    import dal_widgets.store as store_mod

    real_exit = store_mod._Transaction.__exit__

    def failing_exit(self, exc_type, exc, tb):
        if exc_type is None:
            self.store._conn.execute("ROLLBACK")
            raise StoreError(
                "could not save this change (database or disk is full); nothing of it was saved"
            )
        return real_exit(self, exc_type, exc, tb)

    monkeypatch.setattr(store_mod._Transaction, "__exit__", failing_exit)
    with pytest.raises(StoreError, match="disk is full"):
        s.label([2], ["dog"])
    monkeypatch.undo()
    assert s.labels == {1: "cat"}
    s.close()
    assert open_store(path).labels == {1: "cat"}


def test_reopening_in_same_process_takes_over(path):
    first = open_store(path)
    first.label([1], ["cat"])
    second = open_store(path)
    assert first.closed and second.labels == {1: "cat"}
    with pytest.raises(StoreClosedError, match="opened again"):
        first.label([2], ["dog"])


def test_second_process_is_refused_but_can_read(path, tmp_path):
    s = open_store(path)
    s.label([1], ["cat"])
    code = textwrap.dedent(f"""
        from dal_widgets.store import LabelStore, StoreLockedError
        try:
            LabelStore({path!r}, fingerprint="fp1", classes={CLASSES!r})
        except StoreLockedError as e:
            print("LOCKED")
        ro = LabelStore({path!r}, fingerprint="fp1", classes={CLASSES!r}, read_only=True)
        print(ro.labels)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LOCKED", "{1:", "'cat'}"]
    assert StoreLockedError.__mro__[1] is StoreError


def test_label_survives_sigkill_right_after_label_returns(path):
    """A child labels, prints which ids returned, and is SIGKILLed at once: all must be on disk."""
    code = textwrap.dedent(f"""
        import sys
        from dal_widgets.store import LabelStore
        s = LabelStore({path!r}, fingerprint="fp1", classes={CLASSES!r})
        for i in range(10_000):
            s.label([i], ["dog"])
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    returned = []
    for line in proc.stdout:
        returned.append(int(line))
        if len(returned) == 40:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    again = open_store(path)  # the lock died with the child
    assert set(returned) <= set(again.labels)
    assert again._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


CRASH_CHILD = r"""
import json, os, random, sys, time
from dal_widgets.store import LabelStore
path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
s = LabelStore(path, fingerprint="crash", classes=["a", "b", "c"])
if mode == "train":
    import threading
    import torch  # a fit running in a thread while labels are written
    def fit():
        m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3))
        opt = torch.optim.Adam(m.parameters())
        x, y = torch.randn(512, 64), torch.randint(0, 3, (512,))
        while True:
            opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
    threading.Thread(target=fit, daemon=True).start()
print("ready", flush=True)
n = 0
while True:
    k = rng.randint(1, 4)
    ids = [f"{seed}-{n + i}" for i in range(k)]
    action = rng.random()
    if action < 0.1 and len(s):
        s.undo()
        print("undo", flush=True)
    elif mode == "export" and action < 0.3:
        s.export(os.path.join(os.path.dirname(path), "export.csv"))
    else:
        s.label(ids, [rng.choice("abc") for _ in ids])
        print(json.dumps(ids), flush=True)  # printed only after label() returned
    n += k
"""


@pytest.mark.slow
def test_no_returned_label_is_lost_across_50_sigkills(tmp_path):
    """Kill a labeling process at random moments (also while a fit runs or an export writes);
    every label whose label() call returned must be in the store, and the file must be sound."""
    import json
    import random

    path = str(tmp_path / "crash.db")
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    rng = random.Random(0)
    confirmed: set[str] = set()
    kills = 0
    modes = ["label"] * 36 + ["train"] * 8 + ["export"] * 8
    for i, mode in enumerate(modes):
        proc = subprocess.Popen(
            [sys.executable, str(script), path, mode, str(i)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        returned: list[list[str]] = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("["):
                returned.append(json.loads(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        returned += [
            json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("[")
        ]
        store = LabelStore(path, fingerprint="crash", classes=["a", "b", "c"])
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        labels = store.labels
        # Ids are never relabeled, so each returned id has one label event; it must be there,
        # and the id is labeled now exactly when no undo reverted that event's action.
        undone = dict(store._conn.execute("SELECT action_id, undone_by FROM actions").fetchall())
        events = dict(
            store._conn.execute(
                "SELECT e.sample_id, e.action_id FROM events e JOIN actions a USING(action_id) "
                "WHERE a.kind = 'label' AND e.field = 'label'"
            ).fetchall()
        )
        for ids in returned:
            for sid in ids:
                assert sid in events, (
                    f"kill {kills} ({mode}): label {sid} returned but is not in the store"
                )
                assert (sid in labels) == (undone[events[sid]] is None), (
                    f"kill {kills}: {sid} inconsistent"
                )
                confirmed.add(sid)
        store.close()
    assert kills == 52 and len(confirmed) > 200
    print(f"{kills} SIGKILLs, {len(confirmed)} returned labels checked, 0 lost")


def test_hostile_class_names_and_ids_round_trip(path, tmp_path):
    classes = ["<b onmouseover=alert(1)>x</b>", 'O\'Brien "quoted"', "'; DROP TABLE state; --"]
    s = open_store(path, classes=classes)
    s.label(["a'; DELETE FROM events; --", "<img src=x>"], [classes[2], classes[0]])
    s.close()
    again = open_store(path, classes=classes)
    assert again.labels == {"a'; DELETE FROM events; --": classes[2], "<img src=x>": classes[0]}
    assert len(again.history()) == 2
    out = again.export(tmp_path / "x.csv")
    assert "DROP TABLE" in out.read_text()


def test_a_full_disk_loses_nothing_already_saved(path):
    s = open_store(path)
    s.label([0], ["cat"])
    # SQLite's own limit on the file size gives the real "database or disk is full" error.
    s._conn.execute(
        "PRAGMA max_page_count = " + str(s._conn.execute("PRAGMA page_count").fetchone()[0])
    )
    saved, failed = 1, 0
    for i in range(1, 2000):
        try:
            s.label([i], ["dog"])
            saved += 1
        except StoreError as exc:
            assert "full" in str(exc) and "nothing of it was saved" in str(exc)
            failed += 1
            break
    assert failed == 1
    assert len(s.labels) == saved  # memory matches what was committed
    s.close()
    assert len(open_store(path).labels) == saved


def test_multi_label_store_round_trips_sets(path, tmp_path):
    s = open_store(path, multi_label=True)
    s.label([1, 2], [["eel", "cat"], []])
    assert s.labels == {1: ("cat", "eel"), 2: ()}  # class order, empty set allowed
    with pytest.raises(ValueError, match="collections of class names"):
        s.label([3], ["cat"])
    s.label([1], [("dog",)])
    s.undo()
    assert s.labels[1] == ("cat", "eel")
    rows = list(csv.DictReader(open(s.export(tmp_path / "m.csv"))))
    assert json.loads(rows[0]["label"]) == ["cat", "eel"]
    s.close()
    with pytest.raises(StoreMismatchError, match="multi-label"):
        open_store(path)  # a single-label session cannot open it
    assert open_store(path, multi_label=True).labels[1] == ("cat", "eel")
