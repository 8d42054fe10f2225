"""Server-side cost of one label action in the labeling widget, of a new model's suggestions
reaching the tiles on screen, and of "accept page".

One action = the frontend's message arrives (as Jupyter delivers it to the widget), the label
is committed to the SQLite store (WAL, synchronous=FULL), the tile state and progress traits
are updated, the cursor moves. Measured without a browser, on the embedded digits data, with the
store on disk. Target (issue 5): median under 10 ms.

Suggestions follow the model (issue 21): the time from a finished fit (the session's "trained"
event) to the 12 tiles on screen holding that model's suggestions, over repeated fits; target
p95 under 500 ms on 2 CPU cores. "Accept page" (issue 21): labeling the 12 suggested tiles of a
review page as one store action; target median under 50 ms server side.

    python benchmarks/widgets.py [--actions 300] [--quick]

Prints the figures and writes ``benchmarks/results/widgets.json`` with
``widgets-latency.png`` (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _harness import Measurement, Report


def suggestions_after_fit(fits: int) -> list[float]:
    """Seconds from each finished fit to its suggestions on a 12-tile batch (digits)."""
    import dal_widgets as dal

    ds = dal.datasets.digits()
    s = dal.Session(
        ds, store=None, device="cpu", retrain="manual", train_config=dal.TrainConfig(steps=20)
    )
    finished: list[float] = []
    s.on("trained", lambda **kw: finished.append(time.perf_counter()))  # before the labeler's
    w = dal.LabelingWidget(s, batch_size=12, prefetch=False)
    ids = ds.ids[:30].tolist()
    s.label(ids, ds.targets[ds.positions(ids)].tolist())
    out = []
    for _ in range(fits):
        before = w.suggestions_at
        s.train(block=True)
        assert w.suggestions_at != before and all(it["suggestion"] is not None for it in w.items)
        out.append(w.suggestions_at - finished[-1])
    s.close()
    return out


def accept_pages(pages: int) -> list[float]:
    """Seconds of one "accept page" of 12 suggested tiles (undone between runs)."""
    import dal_widgets as dal

    ds = dal.datasets.digits()
    with tempfile.TemporaryDirectory() as tmp:
        s = dal.Session(
            ds,
            store=str(Path(tmp) / "accept.db"),
            device="cpu",
            retrain="manual",
            train_config=dal.TrainConfig(steps=20),
        )
        ids = ds.ids[:30].tolist()
        s.label(ids, ds.targets[ds.positions(ids)].tolist())
        s.train(block=True)
        w = dal.LabelingWidget(s, batch_size=12, prefetch=False, start=False)
        w.review(ds.ids[100:112].tolist(), title="benchmark")
        out = []
        for seq in range(1, pages + 1):
            t0 = time.perf_counter()
            w.receive({"action": "accept_page", "seq": seq}, [])
            out.append(time.perf_counter() - t0)
            assert len(s.labels) == 42, "accept page labels the 12 tiles"
            w.undo()
        s.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=None, help="default 300 (--quick: 60)")
    parser.add_argument("--quick", action="store_true", help="60 actions: a smoke run")
    args = parser.parse_args()
    actions = args.actions or (60 if args.quick else 300)
    commits = 200 if not args.quick else 50

    report = Report(
        "widgets", "Labeling widget: server-side cost of one label action", quick=args.quick
    )

    import dal_widgets as dal

    ds = dal.datasets.digits()
    with tempfile.TemporaryDirectory() as tmp:
        s = dal.Session(ds, store=str(Path(tmp) / "bench.db"), device="cpu", retrain="manual")
        w = dal.LabelingWidget(s, batch_size=20, prefetch=True)
        times, batch_times, store_times = [], [], []
        seq = 0
        while len(times) < actions:
            item = w.items[w.cursor]
            sid = w.current_id
            label = ds.classes[ds.targets[ds.positions([sid])[0]]]
            seq += 1
            at_batch_end = sum(st["status"] == "pending" for st in w.states.values()) == 1
            t0 = time.perf_counter()
            w.receive({"action": "label", "key": item["key"], "label": label, "seq": seq}, [])
            dt = time.perf_counter() - t0
            assert w.ack == seq and sid in s.labels
            if not at_batch_end:  # a batch change shows the next batch: reported apart
                times.append(dt)
            else:
                batch_times.append(dt)
        # The store commit alone, for reference.
        store = s.store
        ids = [i for i in ds.ids.tolist() if i not in s.labels][:commits]
        for sid in ids:
            t0 = time.perf_counter()
            store.label([sid], ["0"])
            store_times.append(time.perf_counter() - t0)
        s.close()
    action = Measurement.from_times(times)
    commit = Measurement.from_times(store_times)
    print(f"label actions measured: {action.n} (batch changes excluded)")
    print(
        f"one label action, server side: median {action.median * 1e3:.2f} ms, "
        f"p95 {action.p95 * 1e3:.2f} ms, max {action.max * 1e3:.2f} ms"
    )
    print(f"store commit alone (fsync):    median {commit.median * 1e3:.2f} ms")
    met = action.median < 0.010
    print(f"target median < 10 ms: {'met' if met else 'NOT met'}")

    def row(name: str, m: Measurement) -> list:
        ms = [f"{v * 1e3:.2f}" for v in (m.median, m.p95, m.max)]
        return [name, m.n, *ms]

    rows = [row("label action (batch changes excluded)", action)]
    if batch_times:
        rows.append(
            row(
                "label action that ends a batch (next batch shown)",
                Measurement.from_times(batch_times),
            )
        )
    rows.append(row("store commit alone (fsync), reference", commit))
    report.table(
        "One label action, server side (digits, store on disk)",
        ["operation", "n", "median ms", "p95 ms", "max ms"],
        rows,
    )
    report.target("label action, median", f"{action.median * 1e3:.2f} ms", "< 10 ms", met)
    report.note(
        f"the store commit alone (measured apart) is {commit.median / action.median:.0%} of the "
        "action's median time; the rest: widget traits, tile state, cursor."
    )
    report.note("measured without a browser: the message handler as Jupyter calls it.")
    if args.quick:
        report.note(f"--quick: {actions} actions; indicative only.")
    report.data.update(action_s=action, store_commit_s=commit, batch_change_s=batch_times)

    follow = Measurement.from_times(suggestions_after_fit(10 if args.quick else 40))
    accept = Measurement.from_times(accept_pages(10 if args.quick else 50))
    print(
        f"finished fit to suggestions on 12 tiles: median {follow.median * 1e3:.1f} ms, "
        f"p95 {follow.p95 * 1e3:.1f} ms"
    )
    print(f"accept page (12 tiles, one store action): median {accept.median * 1e3:.2f} ms")
    report.table(
        "A new model's suggestions on screen, and accepting a page (digits, 12 tiles)",
        ["operation", "n", "median ms", "p95 ms", "max ms"],
        [
            row("finished fit -> suggestions on the 12 tiles", follow),
            row("accept page: 12 suggested tiles, one store action", accept),
        ],
    )
    report.target(
        "finished fit to suggestions, p95",
        f"{follow.p95 * 1e3:.0f} ms",
        "< 500 ms",
        follow.p95 < 0.5,
    )
    report.target(
        "accept page of 12 tiles, median",
        f"{accept.median * 1e3:.1f} ms",
        "< 50 ms",
        accept.median < 0.05,
    )
    report.data.update(suggestions_s=follow, accept_page_s=accept)

    import numpy as np

    fig, ax = report.subplots(figsize=(7, 3.5))
    ms = np.asarray(action.times) * 1e3
    top = max(ms.max(), np.asarray(commit.times).max() * 1e3, 10.0) * 1.05
    bins = np.linspace(0, top, 50)
    ax.hist(ms, bins=bins, color="tab:blue", alpha=0.8, label="label action")
    ax.hist(
        np.asarray(commit.times) * 1e3,
        bins=bins,
        color="tab:gray",
        alpha=0.6,
        label="store commit alone",
    )
    ax.axvline(action.median * 1e3, color="black", lw=1, label="action median")
    ax.axvline(action.p95 * 1e3, color="black", ls="--", lw=1, label="action p95")
    ax.axvline(10, color="tab:red", ls=":", lw=1.5, label="target: median < 10 ms")
    ax.set_xlabel("ms, server side")
    ax.set_ylabel("count")
    ax.set_title("Latency of one label action in the labeling widget", fontsize=10)
    ax.legend(fontsize=8)
    report.figure(
        fig,
        "latency",
        "Histogram of the server-side latency of one label action, and of the store commit alone.",
    )
    report.save()


if __name__ == "__main__":
    main()
