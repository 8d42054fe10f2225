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
    RoundRecord,
    StoreClosedError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)

CLASSES = ["cat", "dog", "eel"]


def _integrity(path):
    """SQLite's own check of the file, from a connection of its own."""
    with sqlite3.connect(path) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


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
    assert again.rounds() == [RoundRecord(round=1, accuracy=0.5)]
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


def test_failed_write_keeps_memory_and_disk_consistent(path):
    s = open_store(path)
    s.label([1], ["cat"])
    # The action's last statement fails, as on a full disk: nothing of it may appear anywhere.
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TRIGGER full BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    with pytest.raises(StoreError, match="disk is full.*nothing of it was saved"):
        s.label([2], ["dog"])
    assert s.labels == {1: "cat"} and len(s.history()) == 1
    s.close()
    with sqlite3.connect(path) as con:
        con.execute("DROP TRIGGER full")
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
            advice = str(e).split("LabelStore.open(")[1].split(")")[0]  # what the error says to run
        ro = eval("LabelStore.open(" + advice + ")")  # the advice, followed as written
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
    assert _integrity(path) == "ok"


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
        assert _integrity(path) == "ok"
        labels = store.labels
        # Ids are never relabeled, so each returned id has one label event; it must be there,
        # and the id is labeled now exactly when no undo reverted that event's action.
        with sqlite3.connect(path) as con:  # read beside the store, as any SQLite tool would
            undone = dict(con.execute("SELECT action_id, undone_by FROM actions").fetchall())
            events = dict(
                con.execute(
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
    # The limit is per connection, so it goes on the store's own: the one fault injection
    # that reaches inside (a tmpfs would need mount rights the suite cannot count on).
    conn = s._conn  # noqa: SLF001
    conn.execute("PRAGMA max_page_count = " + str(conn.execute("PRAGMA page_count").fetchone()[0]))
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


# ---------------------------------------------------------------- one writer, whatever the path
def _try_writer_in_child(path):
    code = textwrap.dedent(f"""
        from dal_widgets.store import LabelStore, StoreError, StoreLockedError
        try:
            s = LabelStore({str(path)!r}, fingerprint="fp1", classes={CLASSES!r})
        except StoreLockedError as e:
            print("LOCKED", e)
        except StoreError as e:
            print("REFUSED", e)
        else:
            s.label([99], ["eel"])
            print("WROTE")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_second_process_through_a_link_is_refused(tmp_path, path, link):
    s = open_store(path)
    s.label([1], ["cat"])
    other = tmp_path / "elsewhere" / "alias.db"
    other.parent.mkdir()
    if link == "symlink":
        other.symlink_to(path)
    else:
        other.hardlink_to(path)
    out = _try_writer_in_child(other)
    assert out.startswith("LOCKED"), out
    assert s.labels == {1: "cat"}
    s.label([2], ["dog"])  # still ours
    s.close()
    out = _try_writer_in_child(other)  # released on close
    if link == "symlink":
        assert out.startswith("WROTE"), out
    else:  # a second name of the file would get a write-ahead log of its own
        assert out.startswith("REFUSED") and "2 hard links" in out, out


def test_closing_another_connection_keeps_the_write_lock(path):
    # Closing any descriptor of a file drops the process's POSIX locks on it: the write lock
    # must not be one of those.
    s = open_store(path)
    s.label([1], ["cat"])
    reader = open_store(path, read_only=True)
    reader.close()
    conn = sqlite3.connect(path)
    conn.execute("SELECT count(*) FROM state").fetchone()
    conn.close()
    assert _try_writer_in_child(path).startswith("LOCKED")
    s.close()


def test_hard_linked_store_is_refused_and_the_open_one_kept(tmp_path, path):
    first = open_store(path)
    first.label([1], ["cat"])
    alias = tmp_path / "alias.db"
    alias.hardlink_to(path)
    for name in (alias, path):
        with pytest.raises(StoreError, match="2 hard links"):
            open_store(name)
        with pytest.raises(StoreError, match="2 hard links"):
            open_store(name, read_only=True)
    assert not first.closed
    first.label([2], ["dog"])
    first.close()
    alias.unlink()
    assert open_store(path).labels == {1: "cat", 2: "dog"}


def test_reopening_through_a_symlink_in_same_process_takes_over(tmp_path, path):
    first = open_store(path)
    first.label([1], ["cat"])
    alias = tmp_path / "alias.db"
    alias.symlink_to(path)
    second = open_store(alias)
    assert first.closed and second.labels == {1: "cat"}
    second.label([2], ["dog"])
    assert sorted(p.name for p in tmp_path.iterdir() if "wal" in p.name) == ["labels.db-wal"]


def test_store_keeps_no_side_files(tmp_path, path):
    s = open_store(path)
    s.label([1], ["cat"])
    assert not (tmp_path / "labels.db.lock").exists()
    s.close()
    # A closed store is one self-contained file: no lock file, no -wal, no -shm.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.db"]
    assert open_store(path, read_only=True).labels == {1: "cat"}


# ---------------------------------------------------------------- read-only where we cannot write
def _sigkilled_writer(path, ids, hold_reader=True):
    """A child labels ids one action each (a reader holding an old snapshot keeps the labels in
    -wal), prints after each returned label and is SIGKILLed."""
    code = textwrap.dedent(f"""
        import os, signal, sqlite3
        from dal_widgets.store import LabelStore
        s = LabelStore({str(path)!r}, fingerprint="fp1", classes={CLASSES!r})
        if {hold_reader!r}:
            r = sqlite3.connect({str(path)!r}, isolation_level=None)
            r.execute("BEGIN")
            r.execute("SELECT count(*) FROM state").fetchone()
        for i in {list(ids)!r}:
            s.label([i], ["dog"])
        print("done", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL and out.stdout.strip() == "done", out.stderr


def _old_style_wal_store(path):
    """A store closed cleanly while still in WAL mode (as stores were before 0.x)."""
    s = open_store(path)
    s.label([1, 2], ["cat", "dog"])
    s.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def _store_in_state(path, case):
    """A store closed cleanly, left in WAL mode by an older version, or SIGKILLed mid-session;
    returns the labels a reader must see."""
    if case == "clean":
        s = open_store(path)
        s.label([1, 2], ["cat", "dog"])
        s.close()
        return {1: "cat", 2: "dog"}
    if case == "wal-clean":
        _old_style_wal_store(path)
        return {1: "cat", 2: "dog"}
    _sigkilled_writer(path, [1, 2, 3])
    return {1: "dog", 2: "dog", 3: "dog"}


@pytest.mark.parametrize("case", ["clean", "wal-clean", "killed", "killed-no-shm"])
def test_read_only_in_a_folder_we_cannot_write(tmp_path, path, monkeypatch, case):
    import dal_widgets.store._file as store_mod

    expected = _store_in_state(path, case)
    if case.startswith("killed"):
        assert (tmp_path / "labels.db-wal").stat().st_size > 0
        if case == "killed-no-shm":
            (tmp_path / "labels.db-shm").unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(store_mod, "_folder_writable", lambda folder: False)
    ro = open_store(path, read_only=True)
    assert ro.labels == expected and len(ro.records()) == len(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written there
    ro.close()


def test_read_only_in_unwritable_folder_while_a_writer_labels(tmp_path, path, monkeypatch):
    import dal_widgets.store._file as store_mod

    code = textwrap.dedent(f"""
        import sys
        from dal_widgets.store import LabelStore
        s = LabelStore({path!r}, fingerprint="fp1", classes={CLASSES!r})
        s.label([1], ["cat"])
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        monkeypatch.setattr(store_mod, "_folder_writable", lambda folder: False)
        # The live writer keeps -wal and -shm, which SQLite can read in place.
        assert open_store(path, read_only=True).labels == {1: "cat"}
    finally:
        proc.communicate("\n", timeout=30)


def _run_as_nobody(code):
    import os
    import pwd
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a child as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    drop = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    out = subprocess.run(
        ["setpriv", *drop, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    if "Permission denied" in out.stderr and "Traceback" not in out.stderr:
        pytest.skip(f"user nobody cannot run this Python: {out.stderr.strip()}")
    return out


@pytest.mark.parametrize("case", ["clean", "wal-clean", "killed"])
def test_read_only_as_another_user_in_their_folder(case):
    """The real thing: a colleague (another user) reads a store in a folder they cannot write."""
    import os
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="dal-ro-")
    try:
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "labels.db")
        expected = _store_in_state(path, case)
        for name in os.listdir(folder):
            os.chmod(os.path.join(folder, name), 0o644)
        code = textwrap.dedent(f"""
            from dal_widgets.store import LabelStore
            ro = LabelStore({path!r}, fingerprint="fp1", classes={CLASSES!r}, read_only=True)
            print(sorted(ro.labels.items()))
            print(sorted(LabelStore.open({path!r}).labels.items()))
        """)
        out = _run_as_nobody(code)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[:2] == [str(sorted(expected.items()))] * 2, out.stderr
    finally:
        shutil.rmtree(folder)


def test_sigkilled_writer_wal_is_seen_by_readers(path):
    _sigkilled_writer(path, range(20))
    assert open_store(path, read_only=True).labels == dict.fromkeys(range(20), "dog")
    again = open_store(path)
    assert again.labels == dict.fromkeys(range(20), "dog")


# ---------------------------------------------------------------- copies and backups
def test_plain_copy_of_the_db_alone_has_every_returned_label(tmp_path, path):
    s = open_store(path)
    copies = tmp_path / "copies"
    copies.mkdir()
    for i in range(5):
        s.label([i], ["cat"])
        # what `cp labels.db` gives mid-session: the main file only, without -wal
        (copies / f"copy{i}.db").write_bytes((tmp_path / "labels.db").read_bytes())
    for i in range(5):
        assert open_store(copies / f"copy{i}.db", read_only=True).labels == dict.fromkeys(
            range(i + 1), "cat"
        )


def test_backup_while_another_thread_labels(tmp_path, path):
    import threading

    s = open_store(path)
    n = 300
    errors = []

    def label():
        try:
            for i in range(n):
                s.label([i], ["dog"])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    worker = threading.Thread(target=label)
    worker.start()
    sizes = []
    k = 0
    while worker.is_alive() or k == 0:
        out = s.backup(tmp_path / f"b{k}.db")
        labels = open_store(out, read_only=True).labels
        # a consistent snapshot: the first len(labels) actions, nothing torn
        assert labels == dict.fromkeys(range(len(labels)), "dog")
        sizes.append(len(labels))
        k += 1
    worker.join()
    assert not errors
    final = s.backup(tmp_path / "final.db")
    assert final == tmp_path / "final.db"
    assert open_store(final, read_only=True).labels == dict.fromkeys(range(n), "dog")
    assert sizes == sorted(sizes)
    conn = sqlite3.connect(final)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    conn.close()
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left


def test_backup_errors_name_the_path(tmp_path, path):
    s = open_store(path)
    s.label([1], ["cat"])
    missing = tmp_path / "missing" / "b.db"
    with pytest.raises(StoreError, match=str(missing)):
        s.backup(missing)
    with pytest.raises(StoreError, match="folder"):
        s.backup(tmp_path)
    with pytest.raises(ValueError, match="'path'.*own file"):
        s.backup(path)
    with pytest.raises(TypeError, match="'path' parameter of LabelStore.backup"):
        s.backup(3)
    memory = open_store(":memory:")
    memory.label([5], ["eel"])
    assert open_store(memory.backup(tmp_path / "m.db"), read_only=True).labels == {5: "eel"}
    s.close()
    with pytest.raises(StoreClosedError):
        s.backup(tmp_path / "late.db")


# ---------------------------------------------------------------- damaged stores
@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'", "'schema_version'"),
        ("UPDATE meta SET value = '[cat' WHERE key = 'classes'", "'classes'"),
        ("UPDATE meta SET value = '{\"a\": 1}' WHERE key = 'classes'", "'classes'"),
        ("UPDATE meta SET value = '[\"cat\", 3]' WHERE key = 'classes'", "'classes'"),
        ("DELETE FROM meta WHERE key = 'round'", "'round'"),
        ("UPDATE meta SET value = 'two' WHERE key = 'round'", "'round'"),
        ("UPDATE meta SET value = 'yes' WHERE key = 'multi_label'", "'multi_label'"),
        ("UPDATE state SET value = 'wolf' WHERE field = 'label'", "'wolf'"),
    ],
)
@pytest.mark.parametrize("read_only", [False, True])
def test_damaged_store_rows_raise_store_error(path, sql, match, read_only):
    s = open_store(path)
    s.label([1], ["cat"])
    s.close()
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=match) as info:
        open_store(path, read_only=read_only)
    assert path in str(info.value) and "damaged" in str(info.value)
    # a failed open leaves the file free for the next one
    with pytest.raises(StoreError, match=match):
        LabelStore.open(path, read_only=read_only)


@pytest.mark.parametrize("value", ["[cat", '"cat"', '["wolf"]', "[1]"])
def test_damaged_multi_label_value_raises_store_error(path, value):
    s = open_store(path, multi_label=True)
    s.label([1], [["cat"]])
    s.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE state SET value = ? WHERE field = 'label'", (value,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="damaged.*sample 1"):
        open_store(path, multi_label=True)


# ---------------------------------------------------------------- parameter types
@pytest.mark.parametrize("bad", [123, b"x.db", None, 1.5, ["x.db"]])
def test_store_path_type_is_checked(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="'store' parameter of LabelStore must be a file path"):
        open_store(bad)
    with pytest.raises(TypeError, match="'store' parameter of LabelStore.open"):
        LabelStore.open(bad)
    assert list(tmp_path.iterdir()) == []  # no file named '123' or "b'x.db'"


# ---------------------------------------------------------------- export leftovers
def test_export_removes_stale_temporary_files(tmp_path, path):
    import os

    s = open_store(path)
    s.label([1], ["cat"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            tmp_path / f".out.csv.{dead.pid}.tmp",  # an export killed by an older version
            tmp_path / f".out.csv.{dead.pid}.0a1b2c3d.tmp",  # a killed export
            tmp_path / f".out.csv.{os.getpid()}.0a1b2c3e.tmp",  # an interrupted one of ours
            tmp_path / f".out.csv.{live.pid}.0a1b2c3f.tmp",  # pid reused long after
        ]
        keep = [
            tmp_path / f".out.csv.{live.pid}.0a1b2c40.tmp",  # another process exporting now
            tmp_path / f".other.csv.{dead.pid}.tmp",  # another target
            tmp_path / ".out.csv.notes.tmp",  # not ours
        ]
        for p in stale + keep:
            p.write_text("partial")
        old = time.time() - 2 * 3600
        os.utime(stale[-1], (old, old))
        s.export(tmp_path / "out.csv")
        assert [p.name for p in stale if p.exists()] == []
        assert all(p.exists() for p in keep)
        assert (tmp_path / "out.csv").read_text().startswith("sample_id")
    finally:
        live.kill()
        live.wait()


def test_interrupted_export_leaves_no_temporary_file(tmp_path, path, monkeypatch):
    import os

    s = open_store(path)
    s.label([1], ["cat"])

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.export(tmp_path / "out.csv")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == []


# ---------------------------------------------------------------- close callbacks
def test_close_callbacks_run_once_outside_the_lock(path):
    import threading

    first = open_store(path)
    first.label([1], ["cat"])
    calls = []

    def record(reason):
        # Another thread can use the store's lock while callbacks run.
        t = threading.Thread(target=lambda: calls.append(("labels", first.labels)))
        t.start()
        t.join(timeout=5)
        calls.append(("reason", reason))

    def broken(reason):
        raise RuntimeError("callback failed")

    first.add_close_callback(broken)
    first.add_close_callback(record)
    unsubscribe = first.add_close_callback(lambda reason: calls.append(("unsubscribed", reason)))
    unsubscribe()
    second = open_store(path)  # takes the store over: callbacks of the first run
    assert first.closed
    assert calls[0] == ("labels", {1: "cat"})
    assert calls[1][0] == "reason" and "opened again" in calls[1][1]
    assert len(first.close_callback_errors) == 1
    assert "callback failed" in first.close_callback_errors[0]
    first.close()  # once only
    assert len(calls) == 2
    # added after closing: called at once with the reason
    late = []
    first.add_close_callback(late.append)
    assert late and "opened again" in late[0]
    got = []
    second.add_close_callback(got.append)
    second.close()
    second.close()
    assert got == ["close() was called"]
    with pytest.raises(TypeError, match="'callback' parameter of LabelStore.add_close_callback"):
        second.add_close_callback("not callable")


# ---------------------------------------------------------------- LabelStore.open
def test_open_reads_the_identity_from_the_file(tmp_path, path):
    s = LabelStore(path, fingerprint="fpX", classes=CLASSES, dataset_name="toy", multi_label=True)
    s.label([1], [["cat", "eel"]])
    s.add_class("fox")
    s.close()
    ro = LabelStore.open(path)
    assert ro.read_only and ro.multi_label and ro.classes == [*CLASSES, "fox"]
    assert ro.fingerprint == "fpX" and ro.dataset_name == "toy"
    assert ro.labels == {1: ("cat", "eel")}
    assert ro.export(tmp_path / "x.jsonl").exists()
    with pytest.raises(StoreError, match="read_only=True"):
        ro.label([2], [["cat"]])
    ro.close()
    rw = LabelStore.open(path, read_only=False, annotator="me")
    rw.label([2], [["fox"]])
    rw.close()
    assert LabelStore.open(path).labels == {1: ("cat", "eel"), 2: ("fox",)}
    with pytest.raises(StoreError, match="does not exist"):
        LabelStore.open(tmp_path / "nothing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(StoreError, match="not a dal_widgets label store"):
        LabelStore.open(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 200)
    with pytest.raises(StoreError, match=str(junk)):
        LabelStore.open(junk)


def test_garbage_collected_writer_releases_the_lock(path):
    import gc

    s = open_store(path)
    s.label([1], ["cat"])
    del s
    gc.collect()
    assert _try_writer_in_child(path).startswith("WROTE")
    assert open_store(path).labels == {1: "cat", 99: "eel"}


def test_takeover_stops_a_labeling_thread_through_its_close_callback(tmp_path, path):
    import threading

    first = open_store(path)
    stop = threading.Event()
    outcome = []
    saved = []

    def keep_labeling():
        i = 0
        while not stop.is_set():
            try:
                first.label([i], ["cat"])
            except StoreClosedError:
                outcome.append("closed")
                return
            saved.append(i)
            i += 1

    worker = threading.Thread(target=keep_labeling)

    def on_close(reason):
        stop.set()
        worker.join(timeout=10)  # the thread's store calls must not wait for us
        # a callback may open stores (no module lock is held while it runs)
        other = open_store(tmp_path / "other.db")
        other.close()
        outcome.append("stopped")

    first.add_close_callback(on_close)
    worker.start()
    time.sleep(0.2)
    second = open_store(path)
    assert not worker.is_alive() and outcome[-1] == "stopped"
    assert first.closed and not first.close_callback_errors
    # every label the thread was told was saved is in the new store
    assert saved and set(saved) <= set(second.labels)


def test_record_query_starts_a_round_in_one_transaction(path):
    s = open_store(path)
    s.label([1, 2], ["cat", "dog"])
    rnd = s.record_query("margin", [3, 4], scores=[0.9, 0.5], model_version=2, infer_s=0.25)
    assert rnd == 1 and s.round == 1
    (row,) = s.rounds()
    assert row == RoundRecord(
        round=1, strategy="margin", queried=2, infer_s=0.25, n_labels_at_query=2, model_version=2
    )
    assert s.queries()[-1]["ids"] == [3, 4] and s.queries()[-1]["scores"] == [0.9, 0.5]
    s.update_round(train_s=1.5, n_labels=4, model_version=3)
    assert s.rounds()[0].labels_seen == 4 and s.rounds()[0].model_version == 3
    with pytest.raises(TypeError, match="unknown field.*'acuracy'"):
        s.update_round(acuracy=0.9)
    # The round's history row is written last: make that write fail, and nothing of the query
    # (round number, query log) may remain.
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TRIGGER no_rounds BEFORE INSERT ON rounds BEGIN SELECT RAISE(ABORT, 'full'); END"
        )
    with pytest.raises(StoreError, match="nothing of it was saved"):
        s.record_query("margin", [5], model_version=3)
    assert s.round == 1 and len(s.queries()) == 1 and len(s.rounds()) == 1
    s.close()
    again = open_store(path)
    assert again.round == 1 and len(again.queries()) == 1
    again.close()
