"""Background training: throughput against a bare PyTorch loop, and notebook responsiveness.

1. samples/s of the session's worker thread against a bare loop (same model, data, optimizer,
   batch size and steps, same device) measured in the same run. Target (issue 4): ratio >= 0.9
   on the CPU.
2. While the worker trains, the main thread does what a widget callback does (a label action
   through the labeling widget: trait change, store commit, state update) every 50 ms; its
   latency is the time the kernel thread is held. Target: p95 < 50 ms.

    python benchmarks/training.py [--steps 1500] [--device cpu] [--quick]

Prints the figures and writes ``benchmarks/results/training.json`` with
``training-step-time.png`` and ``training-latency.png`` (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _harness import Measurement, Report, ratio


def bare_loop(model_fn, X, y, steps, batch, lr, wd, device, seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = model_fn().to(device)
    X, y = X.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    model.train()
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default 1500 (--quick: 200)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument(
        "--quick", action="store_true", help="200 steps, 2 runs: a smoke run of seconds"
    )
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 1500)
    repeat = args.repeat or (2 if args.quick else 5)

    report = Report(
        "training", "Background training: throughput and responsiveness", quick=args.quick
    )

    import torch

    import dal_widgets as dal
    from dal_widgets.training import MLP, TrainConfig, resolve_device

    device = resolve_device(args.device)
    ds = dal.datasets.digits()
    config = TrainConfig(steps=steps, batch_size=64, max_epochs=10_000)
    n = args.labels
    setup = (
        f"device {device.type}, digits, {n} labels, MLP {ds.X.shape[1:]} -> 10, {steps} steps of 64"
    )
    print(setup)

    X = torch.as_tensor(ds.X[:n])
    y = torch.as_tensor(ds.targets[:n])
    with tempfile.TemporaryDirectory() as tmp:
        s = dal.Session(
            ds, store=str(Path(tmp) / "t.db"), device=device, retrain="manual", train_config=config
        )
        s.label(ds.ids[:n].tolist(), ds.targets[:n])
        # Warm-up: the first fit in a new thread (the worker) pays for torch's thread-pool set-up,
        # once per session; the bare loop gets the same warm-up.
        s.train(block=True)
        bare_loop(lambda: MLP(64, 10), X, y, 100, 64, config.lr, config.weight_decay, device, 0)
        bare_times, worker_times, walls = [], [], []
        for rep in range(repeat):  # interleaved, so drifting machine load hits both alike
            bare_s = bare_loop(
                lambda: MLP(64, 10),
                X,
                y,
                steps,
                64,
                config.lr,
                config.weight_decay,
                device,
                rep,
            )
            t0 = time.perf_counter()
            s.train(block=True)
            wall = time.perf_counter() - t0
            worker_s = s.model_version.seconds  # the worker's own clock: the fit alone
            bare_times.append(bare_s)
            worker_times.append(worker_s)
            walls.append(wall)
            print(
                f"  run {rep}: bare loop {steps * 64 / bare_s:,.0f} samples/s, worker "
                f"{steps * 64 / worker_s:,.0f} samples/s (fit {worker_s:.2f} s, train() to done "
                f"{wall:.2f} s)"
            )
        s.close()
    bare = Measurement.from_times(bare_times)
    worker = Measurement.from_times(worker_times)
    wall_m = Measurement.from_times(walls)
    throughput = ratio(bare, worker)  # worker samples/s over bare samples/s, medians
    print(
        f"throughput ratio worker / bare (median of {repeat}): {throughput:.3f}  target >= 0.9: "
        f"{'met' if throughput >= 0.9 else 'NOT met'}"
    )

    # Responsiveness while training.
    with tempfile.TemporaryDirectory() as tmp:
        s = dal.Session(
            ds,
            store=str(Path(tmp) / "r.db"),
            device=device,
            retrain="manual",
            train_config=TrainConfig(steps=steps * 4, batch_size=64, max_epochs=10_000),
        )
        s.label(ds.ids[:n].tolist(), ds.targets[:n])
        w = dal.LabelingWidget(s, batch_size=10, prefetch=False)
        s.train()
        time.sleep(0.5)
        lat, seq = [], 0
        while s.training and len(lat) < 200:
            item = w.items[w.cursor]
            sid = w.current_id
            seq += 1
            t0 = time.perf_counter()
            w.receive({"action": "label", "key": item["key"], "label": "1", "seq": seq}, [])
            lat.append(time.perf_counter() - t0)
            assert sid in s.labels
            time.sleep(0.05)
        s.stop()
        s.wait()
        s.close()
    if not lat:
        raise SystemExit("training ended before the first label action: use more --steps")
    latency = Measurement.from_times(lat)
    print(
        f"label action while the worker trains: {latency.n} actions, median "
        f"{latency.median * 1e3:.1f} ms, p95 {latency.p95 * 1e3:.1f} ms, max "
        f"{latency.max * 1e3:.1f} ms  target p95 < 50 ms: {'met' if latency.p95 < 0.05 else 'NOT met'}"
    )

    samples = steps * 64
    report.table(
        f"Throughput, {setup} (median [best] of {repeat} interleaved runs)",
        ["loop", "seconds", "samples/s", "ms/step"],
        [
            [
                "bare PyTorch loop (reference)",
                f"{bare.median:.2f} [{bare.min:.2f}]",
                f"{samples / bare.median:,.0f}",
                f"{bare.median / steps * 1e3:.3f}",
            ],
            [
                "session worker thread (fit)",
                f"{worker.median:.2f} [{worker.min:.2f}]",
                f"{samples / worker.median:,.0f}",
                f"{worker.median / steps * 1e3:.3f}",
            ],
            [
                "session.train(block=True), call to done",
                f"{wall_m.median:.2f} [{wall_m.min:.2f}]",
                f"{samples / wall_m.median:,.0f}",
                f"{wall_m.median / steps * 1e3:.3f}",
            ],
        ],
    )
    report.table(
        "Label action through the labeling widget while the worker trains (every 50 ms)",
        ["actions", "median ms", "p95 ms", "max ms"],
        [
            [
                latency.n,
                f"{latency.median * 1e3:.1f}",
                f"{latency.p95 * 1e3:.1f}",
                f"{latency.max * 1e3:.1f}",
            ]
        ],
    )
    report.target(
        "throughput, worker / bare loop (medians)",
        round(throughput, 3),
        ">= 0.9",
        throughput >= 0.9,
    )
    report.target(
        "label action while training, p95",
        f"{latency.p95 * 1e3:.1f} ms",
        "< 50 ms",
        latency.p95 < 0.05,
    )
    report.note(
        "throughput ratio = bare loop seconds / worker fit seconds (medians, same run, runs "
        "interleaved); the worker's seconds are its own clock (model_version.seconds)."
    )
    report.note(
        "label action latency: the time the kernel thread is held by one label message "
        "(trait change, store commit, state update), while the worker trains."
    )
    if args.quick:
        report.note("--quick: 200 steps and 2 runs; indicative only.")
    report.data.update(
        steps=steps,
        labels=n,
        device=device.type,
        bare_s=bare,
        worker_s=worker,
        train_call_s=wall_m,
        latency_s=latency,
    )
    _figures(report, bare, worker, latency, steps)
    report.save()


def _figures(report: Report, bare, worker, latency, steps: int) -> None:
    import numpy as np

    fig, ax = report.subplots(figsize=(7, 3.5))
    runs = np.arange(bare.n)
    ax.bar(runs - 0.2, [t / steps * 1e3 for t in bare.times], 0.4, label="bare PyTorch loop")
    ax.bar(runs + 0.2, [t / steps * 1e3 for t in worker.times], 0.4, label="session worker")
    ax.axhline(bare.median / steps * 1e3, color="tab:blue", ls=":", lw=1)
    ax.axhline(worker.median / steps * 1e3, color="tab:orange", ls=":", lw=1)
    ax.set_xticks(runs, [f"run {i}" for i in runs])
    ax.set_ylabel("ms per optimizer step (batch 64)")
    ax.set_title(f"Time per step, worker / bare throughput {ratio(bare, worker):.3f}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    report.figure(
        fig,
        "step-time",
        "Milliseconds per training step: the session's worker thread against a bare PyTorch "
        "loop, interleaved runs (dotted: medians).",
    )

    fig, ax = report.subplots(figsize=(7, 3.5))
    ms = np.asarray(latency.times) * 1e3
    ax.hist(ms, bins=np.linspace(0, max(ms.max(), 50.0) * 1.05, 50), color="tab:blue")
    ax.axvline(latency.median * 1e3, color="black", ls="-", lw=1, label="median")
    ax.axvline(latency.p95 * 1e3, color="black", ls="--", lw=1, label="p95")
    ax.axvline(50, color="tab:red", ls=":", lw=1.5, label="target p95 < 50 ms")
    ax.set_xlabel("ms the kernel thread is held by one label action")
    ax.set_ylabel("label actions")
    ax.set_title("Label action latency while the worker trains", fontsize=10)
    ax.legend(fontsize=8)
    report.figure(
        fig,
        "latency",
        "Histogram of the label action's latency in the kernel while the worker trains.",
    )


if __name__ == "__main__":
    main()
