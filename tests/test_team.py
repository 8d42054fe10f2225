"""The team queue against a real PostgreSQL server (a throwaway cluster, see ``_pg.py``).

Without the server binaries or psycopg these tests are skipped, or fail when
``DAL_REQUIRE_POSTGRES=1`` (CI), as the browser tests do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import dal_widgets as dal

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster(pg_cluster):
    return pg_cluster


@pytest.fixture
def url(pg_url):
    return pg_url


def expire_leases(url):
    """Every lease of the database expires now (instead of sleeping past a short lease)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE dal_leases SET expires = clock_timestamp() - interval '1 second'")


def queue(url, who, **kw):
    from dal_widgets.team import TeamQueue

    return TeamQueue(url, project="p", annotator=who, **{"overlap": 2, **kw})


def test_overlap_leases_and_never_twice_to_the_same_annotator(url):
    from dal_widgets.team import LeaseLostError

    a, b, c = (queue(url, w, lease_seconds=600) for w in ("ann", "bo", "cy"))
    assert a.add_items(range(5), priority=0) == 5 and a.add_items(range(5)) == 0
    a.set_priorities({3: 5.0, 4: 4.0})
    assert a.claim(2) == [3, 4]  # best priority first
    assert b.claim(10) == [3, 4, 0, 1, 2]  # a second slot of every item
    assert c.claim(10) == [0, 1, 2]  # items 3 and 4 have two live leases: overlap 2
    a.label(3, "cat")
    a.label(3, "cat")  # the same label again (a retry): recorded once
    with pytest.raises(ValueError, match="append-only"):
        a.label(3, "dog")
    assert a.claim(10) == [4]  # never item 3 again; 0-2 are taken by b and c
    expire_leases(url)  # as if a lease's time ran out
    assert c.claim(10) == [3, 4, 0, 1, 2]
    assert a.claim(10) == [4, 0, 1, 2]
    with pytest.raises(LeaseLostError):
        b.label(4, "cat")  # b's lease expired and a and c hold both slots now
    assert b.heartbeat() == 0  # an expired lease is not revived
    c.label(3, "dog")
    assert sorted(c.leased()) == [0, 1, 2, 4]
    c.release([0])
    assert sorted(c.leased()) == [1, 2, 4] and c.remaining() == 4
    assert [(i, w) for i, w, _ in a.labels()] == [(3, "ann"), (3, "cy")]
    agree = dal.agreement(a.labels())
    assert agree.n_items == 1 and agree.pairs[0]["kappa"] == 0.0  # cat vs dog
    for q in (a, b, c):
        q.close()


def test_bad_urls_and_credentials_never_show_the_password(cluster, url):
    from dal_widgets.team import TeamQueue, redact

    secret = "hunter2-secret"
    bad = f"postgresql://postgres:{secret}@127.0.0.1:1/nodb?connect_timeout=2"
    with pytest.raises(ConnectionError) as err:
        TeamQueue(bad, project="p", annotator="ann")
    assert secret not in str(err.value) and "***" in str(err.value)
    for wrong in (f"mysql://root:{secret}@host/db", f"root:{secret}@host/db", secret.encode()):
        with pytest.raises(ValueError, match="'url'") as err:
            TeamQueue(wrong, project="p", annotator="ann")
        assert secret not in str(err.value)
    # A URL libpq cannot parse: its message quotes the decoded password; ours does not.
    with pytest.raises(ValueError, match="'url'") as err:
        TeamQueue("postgresql://ann:50%zz@/db?host=/nowhere", project="p", annotator="ann")
    assert "50%zz" not in str(err.value) and "50" not in str(err.value).split("Got")[1]
    with pytest.raises(ValueError, match="DAL_POSTGRES_URL"):
        TeamQueue(None, project="p", annotator="ann")
    with pytest.raises(ValueError, match="'annotator'"):
        TeamQueue(url, project="p", annotator="")
    assert redact(f"password={secret} host=x") == "password=*** host=x"
    q = queue(url, "ann")
    assert "overlap=2" in repr(q)
    with pytest.raises(ValueError, match="overlap=2"):
        queue(url, "bo", overlap=3)  # the project keeps the overlap it was made with
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE dal_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError, match="version 99"):
        queue(url, "cy")
    q.close()


def test_training_labels_follow_the_rule_and_adjudication_wins(url):
    a, b, c = (queue(url, w, overlap=3) for w in ("ann", "bo", "cy"))
    a.add_items(range(5))
    for q, labels in ((a, "cat dog cat _ cat"), (b, "cat cat cat"), (c, "dog _ cat")):
        for item, lab in enumerate(labels.split()):
            if lab != "_":
                q.label(item, lab)
    # item 0: cat, cat, dog; item 1: dog, cat (a tie, 2 of 3 labels); item 2: cat x3;
    # item 3: no labels; item 4: one label of 3
    assert a.training_labels("first") == {0: "cat", 1: "dog", 2: "cat", 4: "cat"}
    assert a.training_labels("majority") == {0: "cat", 2: "cat"}  # ties and 4 wait
    assert a.training_labels("adjudicated") == {2: "cat"}  # only agreement counts
    assert a.disagreements() == {0: [("ann", "cat"), ("bo", "cat"), ("cy", "dog")],
                                 1: [("ann", "dog"), ("bo", "cat")]}  # fmt: skip
    c.adjudicate(1, "dog")
    c.adjudicate(1, "cat")  # the newest decision counts
    assert a.training_labels("majority") == {0: "cat", 1: "cat", 2: "cat"}
    b.adjudicate(3, "dog")  # a decision on an item nobody labeled counts too
    assert a.training_labels("adjudicated") == {1: "cat", 2: "cat", 3: "dog"}
    assert a.training_labels("first")[1] == "cat" and 1 not in a.disagreements()
    with pytest.raises(ValueError, match="'rule'"):
        a.training_labels("vote")
    with pytest.raises(ValueError, match="'item'"):
        a.adjudicate(99, "cat")
    for q in (a, b, c):
        q.close()


@pytest.mark.slow
def test_eight_annotators_two_killed_and_a_server_restart_lose_nothing(cluster, url, tmp_path):
    """8 annotator processes on 2,000 items with overlap 2 and random think times; 2 are
    SIGKILLed holding a batch (their items come back after the 3 s lease); the server is
    stopped with ``pg_ctl stop -m immediate`` and restarted mid-run. Every item ends with
    exactly 2 labels from 2 annotators, and every label an annotator's ``label()`` returned
    from is on the server."""
    setup = queue(url, "setup")
    setup.add_items(range(2000))
    setup.close()
    procs = []
    for k in range(8):
        log = tmp_path / f"a{k}.jsonl"
        code = f"import _pg; _pg.annotate({url!r}, 'p', 'a{k}', {str(log)!r}, 2.0, {k >= 6})"
        procs.append(
            (
                subprocess.Popen([sys.executable, "-c", code], cwd=HERE, start_new_session=True),
                log,
            )
        )
    deadline = time.monotonic() + 60
    for p, log in procs[6:]:  # the two that will die: wait until they hold a batch
        while not (log.exists() and "claimed" in log.read_text()):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    held = [json.loads(log.read_text().splitlines()[0])[1] for _, log in procs[6:]]
    assert all(1 <= len(h) <= 10 for h in held)

    def acked() -> int:
        return sum(len(log.read_text().splitlines()) for _, log in procs[:6] if log.exists())

    while acked() < 1200:  # mid-run
        assert time.monotonic() < deadline + 60
        time.sleep(0.05)
    import psycopg

    def started() -> object:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]

    before = started()
    cluster.restart(pause=1.0)
    assert started() > before and acked() < 3500  # restarted, and while they were labeling
    for p, _ in procs[:6]:
        assert p.wait(timeout=300) == 0
    check = queue(url, "check")
    labels = check.labels()
    check.close()
    per_item = Counter(i for i, _, _ in labels)
    assert set(per_item) == set(range(2000)) and set(per_item.values()) == {2}
    assert all(len({w for i2, w, _ in labels if i2 == i}) == 2 for i in (0, 999, 1999))
    assert len(set((i, w) for i, w, _ in labels)) == 4000  # two different annotators each
    on_server = {(i, w): lab for i, w, lab in labels}
    for k, (_, log) in enumerate(procs[:6]):
        for line in log.read_text().splitlines():
            item, lab = json.loads(line)
            assert on_server[(item, f"a{k}")] == lab  # acknowledged, so kept
    for h in held:  # the killed annotators' batches were labeled by others after the lease
        assert all(per_item[i] == 2 for i in h)
    assert not any(w in ("a6", "a7") for _, w, _ in labels)
