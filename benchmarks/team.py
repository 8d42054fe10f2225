"""Labeling as a team on PostgreSQL (issue 17): lease claims and labels with 8 annotators.

A throwaway PostgreSQL cluster (Debian's server binaries, a Unix socket, ``tests/_pg.py``) holds
one project of 4,000 items with overlap 2. Eight annotator processes claim batches of 10
(``TeamQueue.claim``) and label each item (``TeamQueue.label``, one committed transaction
each) with no think time, so the server is as busy as 8 annotators can make it; each records
the wall time of every claim and label. Reported: sustained labels per second, claim and label
latency p50/p95 over all annotators, and, as the baseline measured in the same run on the same
server, the round trip of ``SELECT 1`` from one process, with the ratios to it.

    python benchmarks/team.py            # 4,000 items (8,000 labels), about a minute
    python benchmarks/team.py --quick    # 400 items
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _harness import Measurement, Report, cpu_ticks, others_share

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the throwaway cluster of the tests

ANNOTATORS = 8
BATCH = 10


def worker(url: str, project: str, name: str, think_ms: str, out: str) -> None:
    """One annotator: claim and label until no item needs labels, ``think_ms`` before each
    label; times to ``out``."""
    from dal_widgets.team import LeaseLostError, TeamQueue

    think = float(think_ms) / 1000
    q = TeamQueue(url, project=project, annotator=name, overlap=2, lease_seconds=60)
    claims, labels, empty = [], [], 0
    while True:
        t0 = time.perf_counter()
        ids = q.claim(BATCH)
        if ids:  # an empty claim (nothing free at the end of a run) is not a claim's latency
            claims.append(time.perf_counter() - t0)
        else:
            empty += 1
        if not ids:
            if q.remaining() == 0:
                break
            time.sleep(0.01)
            continue
        for item in ids:
            time.sleep(think)
            t0 = time.perf_counter()
            try:
                q.label(item, f"c{item % 10}")
            except LeaseLostError:
                continue
            labels.append(time.perf_counter() - t0)
    q.close()
    Path(out).write_text(json.dumps({"claims": claims, "labels": labels, "empty": empty}))


def phase(cluster, url: str, project: str, n_items: int, think_ms: float) -> dict:
    """8 annotator processes label ``n_items`` twice each; their timings and the result."""

    from dal_widgets.team import TeamQueue

    setup = TeamQueue(url, project=project, annotator="setup", overlap=2)
    setup.add_items(range(n_items))
    setup.close()
    outs = [Path(cluster.root) / f"{project}{k}.json" for k in range(ANNOTATORS)]
    start = cpu_ticks()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, project, f"a{k}", str(think_ms), str(out)],
            cwd=HERE,
        )
        for k, out in enumerate(outs)
    ]
    codes = [p.wait(timeout=1800) for p in procs]
    wall = time.perf_counter() - t0
    load = others_share(start, cpu_ticks())
    if any(codes):
        raise SystemExit(f"annotator processes failed: exit codes {codes}")
    check = TeamQueue(url, project=project, annotator="check", overlap=2)
    done = check.labels()
    check.close()
    times = [json.loads(o.read_text()) for o in outs]
    per_item: dict = {}
    for item, who, _ in done:
        per_item.setdefault(item, set()).add(who)
    exact = len(per_item) == n_items and all(len(w) == 2 for w in per_item.values())
    return {
        "items": n_items,
        "labels": len(done),
        "wall": wall,
        "rate": len(done) / wall,
        "load": load,
        "exact": exact and len(done) == 2 * n_items,
        "claim": Measurement.from_times([t for w in times for t in w["claims"]]),
        "empty_claims": sum(w["empty"] for w in times),
        "label": Measurement.from_times([t for w in times for t in w["labels"]]),
    }


def follow_phase(url: str, fits: int) -> dict:
    """A trainer session and two followers (Session(team=...), digits): after each of the
    trainer's fits, the time until each follower has the new model (its suggestions) and
    until the queue's priorities are the new ranking's."""
    import os
    import tempfile
    import threading

    import dal_widgets as dal
    from dal_widgets.training import TrainConfig

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="dal-team-bench-")  # model folder
    ds = dal.datasets.digits()

    def member(who: str) -> dal.Session:
        return dal.Session(
            ds, store=url, project="follow", annotator=who, device="cpu", retrain="manual",
            train_config=TrainConfig(steps=60), team=dal.Team(lease_seconds=30),
        )  # fmt: skip

    trainer = member("trainer")
    followers = [member("f1"), member("f2")]
    seen: dict[str, list[float]] = {"f1": [], "f2": []}
    ready = {f.store.annotator: threading.Event() for f in followers}
    for f in followers:
        who = f.store.annotator
        f.on("trained", lambda who=who, **kw: (seen[who].append(time.perf_counter()),
                                              ready[who].set()))  # fmt: skip
    trained: list[float] = []
    trainer.on("trained", lambda **kw: trained.append(time.perf_counter()))
    check = trainer.store.connect()
    model_s, ranking_s = [], []
    try:
        for _ in range(fits):
            ids = trainer.query(10)
            trainer.label(ids, [ds.classes[t] for t in ds.targets[ds.positions(ids)]])
            for event in ready.values():
                event.clear()
            top = check.execute("SELECT max(priority) FROM dal_items").fetchone()[0]
            trainer.train(block=True)
            t0 = trained[-1]
            for who, event in ready.items():
                if not event.wait(30):
                    raise SystemExit(f"follower {who} did not get the new model in 30 s")
                model_s.append(seen[who][-1] - t0)
            while check.execute("SELECT max(priority) FROM dal_items").fetchone()[0] == top:
                if time.perf_counter() - t0 > 30:
                    raise SystemExit("the queue was not ranked anew within 30 s")
                time.sleep(0.005)
            ranking_s.append(time.perf_counter() - t0)
    finally:
        check.close()
        for f in followers:
            f.close()
        trainer.close()
    return {
        "fits": fits,
        "model": Measurement.from_times(model_s),
        "ranking": Measurement.from_times(ranking_s),
    }


def round_trips(url: str, n: int) -> list[float]:
    import psycopg

    times = []
    with psycopg.connect(url) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 items")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    import _pg

    problem = _pg.problem()
    if problem is not None:
        raise SystemExit(f"benchmarks/team.py needs a PostgreSQL server: {problem}")
    n_items = 400 if args.quick else 4000
    report = Report(
        "team",
        "Labeling as a team: PostgreSQL lease claims and labels, 8 annotators",
        quick=args.quick,
        results=args.results,
    )
    cluster = _pg.Cluster()
    cluster.start()
    try:
        url = cluster.create_db("bench")
        base = Measurement.from_times(round_trips(url, 500))
        # Saturated: no think time, as busy as 8 processes on 2 cores can make the server.
        # Paced: 50 ms before each label (20 labels/s per annotator, still far faster than
        # people), the load a team puts on a server.
        busy = phase(cluster, url, "busy", n_items, 0.0)
        paced = phase(cluster, url, "paced", n_items // 4, 50.0)
        follow = follow_phase(url, 3 if args.quick else 8)
    finally:
        cluster.destroy()
    rows = [
        ["SELECT 1 round trip, one process (baseline)", f"{base.median * 1e3:.2f}",
         f"{base.p95 * 1e3:.2f}", base.n, "1"],
    ]  # fmt: skip
    for name, ph in (("no think time", busy), ("50 ms think time", paced)):
        for what, m in (
            (f"claim({BATCH}): lock, recount, lease", ph["claim"]),
            ("label(): lock the item, check, insert", ph["label"]),
        ):
            rows.append(
                [f"{what}; {name}", f"{m.median * 1e3:.2f}", f"{m.p95 * 1e3:.2f}", m.n,
                 f"{m.median / base.median:.0f}"]
            )  # fmt: skip
    report.table(
        f"{ANNOTATORS} annotator processes, overlap 2, batches of {BATCH}; local PostgreSQL on "
        f"a Unix socket; each claim and each label is one transaction",
        ["measure", "median ms", "p95 ms", "count", "x SELECT 1 (median)"],
        rows,
    )
    report.table(
        "Throughput (worker start-up included, so a lower bound)",
        ["run", "items", "labels", "wall s", "labels per second", "CPU used by other processes",
         "empty claims (not timed)", "every item has exactly 2 labels"],
        [
            [name, ph["items"], ph["labels"], f"{ph['wall']:.1f}", f"{ph['rate']:.0f}",
             f"{ph['load']:.0%}", ph["empty_claims"], str(ph["exact"])]
            for name, ph in (("no think time", busy), ("50 ms think time", paced))
        ],
    )  # fmt: skip
    claims, exact = paced["claim"], busy["exact"] and paced["exact"]
    judge = None if args.quick else True
    report.target("claim latency p95, 8 annotators (50 ms think time)",
                  f"{claims.p95 * 1e3:.1f} ms", "< 20 ms", judge and claims.p95 < 0.020)  # fmt: skip
    report.target("every item labeled exactly twice", exact, "True", exact)
    model, ranking = follow["model"], follow["ranking"]
    report.table(
        f"From the trainer's new model to the team: one trainer and two follower sessions "
        f"(Session(team=...), digits, {follow['fits']} fits of 10 more labels each); time from "
        "the trainer's 'trained' event",
        ["until", "median s", "max s", "count"],
        [
            ["a follower has the new model (its suggestions)", f"{model.median:.2f}",
             f"{max(model.times):.2f}", model.n],
            ["the queue's priorities are the new ranking", f"{ranking.median:.2f}",
             f"{max(ranking.times):.2f}", ranking.n],
        ],
    )  # fmt: skip
    worst = max(max(model.times), max(ranking.times))
    report.target("new model to the annotators' suggestions and priorities (max)",
                  f"{worst:.2f} s", "<= 2 s", judge and worst <= 2.0)  # fmt: skip
    report.note(
        "Followers poll the model file every 0.5 s and the store every 0.5 s; the trainer "
        "ranks the queue on its team thread's next beat after the fit (up to 0.5 s), then "
        "writes the top 200 priorities."
    )
    report.note(
        "All 8 annotators, the server and this process share 2 cores here: with no think time "
        "the latencies are mostly waiting for a core, not for a lock (claims never wait on "
        "locks: SKIP LOCKED)."
    )
    report.data.update(select1=base, busy=busy, paced=paced, follow=follow)
    report.save()


if __name__ == "__main__":
    main()
