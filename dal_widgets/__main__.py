"""Command line: ``python -m dal_widgets demo`` runs a simulated labeling loop and writes a report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dal_widgets",
        description="dal_widgets: deep active learning in Jupyter. Headless commands.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="simulated-oracle active learning on a dataset, with a learning-curve table and an HTML report",
        description=(
            "Runs a simulated oracle (the labels are known; the loop pretends not to know them): "
            "INITIAL balanced labels (by default none: the first batch is the strategy's own), "
            "then rounds of BATCH queries per strategy until BUDGET labels, retraining and "
            "evaluating on the held-out split after each round, beside a scikit-learn baseline "
            "that uses the pool. Prints the learning curves and writes a self-contained HTML "
            "report."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--dataset",
        default="digits",
        help="'digits' (scikit-learn's bundled 8x8 digits) or 'mnist:PATH' (a folder with MNIST test IDX files)",
    )
    demo.add_argument("--strategies", default="random,auto", help="comma-separated strategy names")
    demo.add_argument(
        "--initial",
        type=int,
        default=0,
        help="balanced initial labels (0: none, the strategy picks the first batch too)",
    )
    demo.add_argument("--batch", type=int, default=10, help="labels per round")
    demo.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="query rounds after the initial labels (budget = initial + rounds * batch)",
    )
    demo.add_argument("--budget", type=int, default=None, help="total labels; overrides --rounds")
    demo.add_argument("--seeds", type=int, default=1, help="repetitions with seeds 0..SEEDS-1")
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per fit (default: the library default)",
    )
    demo.add_argument(
        "--encoder",
        choices=("none", "simclr"),
        default="simclr",
        help="'simclr': a self-supervised encoder pretrained on the pool first (cached in the "
        "user cache after the first run) and a head over its embeddings; 'none': the default "
        "model on the inputs",
    )
    demo.add_argument(
        "--pretrain-epochs", type=int, default=100, help="the simclr encoder's epochs"
    )
    demo.add_argument(
        "--label-spreading",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the model also learns from the pool: labels spread over its k-NN graph",
    )
    demo.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the scikit-learn baseline at the same label counts (k-means picks, "
        "label spreading, 5-NN: dal_widgets.baselines), row 'sklearn-spreading'",
    )
    demo.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'mps'")
    demo.add_argument(
        "--out", default="dal_report.html", help="path of the HTML report ('' for none)"
    )
    demo.add_argument(
        "--list-strategies", action="store_true", help="list the available strategies and exit"
    )
    return parser


def _load_dataset(spec: str) -> Any:
    from dal_widgets import datasets

    if spec == "digits":
        return datasets.digits()
    if spec.startswith("mnist:"):
        return datasets.mnist(spec[len("mnist:") :], split="test", holdout=2000)
    raise ValueError(
        f"The '--dataset' option must be 'digits' or 'mnist:PATH'. Got {spec!r} instead."
    )


def demo(args: argparse.Namespace) -> int:
    import dal_widgets as dal
    from dal_widgets.training import TrainConfig

    if args.list_strategies:
        for name, text in dal.strategies.describe().items():
            print(f"{name:20s} {text}")
        return 0
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for s in names:
        dal.strategies.get(s)  # unknown names fail before any work, with a suggestion
    t0 = time.perf_counter()
    ds = _load_dataset(args.dataset)
    budget = args.budget if args.budget is not None else args.initial + args.rounds * args.batch
    encoder = None
    if args.encoder == "simclr":
        encoder = dal.encoders.self_supervised(ds, epochs=args.pretrain_epochs)
        base = TrainConfig.head()
    else:
        base = TrainConfig()
    config = base if args.steps is None else base.with_(steps=args.steps).validated("--steps")
    if args.label_spreading:
        config = config.with_(label_spreading=True)
    print(f"dataset: {ds}")
    print(
        f"strategies: {', '.join(names)}; initial {args.initial}, batch {args.batch}, budget {budget}, "
        f"seeds {args.seeds}, device {args.device}"
    )

    if encoder is not None and not encoder.ready:
        print(f"pretraining {encoder!r} on the pool (once; cached in {encoder.folder})")
        t1 = time.perf_counter()
        encoder.pretrain(args.device)
        print(f"  pretrained in {time.perf_counter() - t1:.0f} s")

    def progress(rec: dict) -> None:
        print(
            f"  {rec['strategy']:>16} seed {rec['seed']} round {rec['round']:>2}: "
            f"{rec['labels']:>4} labels, accuracy {rec['accuracy']:.3f} "
            f"(train {rec['train_s']:.2f}s, select {rec['select_s'] + rec['infer_s']:.3f}s)",
            flush=True,
        )

    result = dal.simulate(
        ds,
        names,
        initial=args.initial,
        batch=args.batch,
        budget=budget,
        seeds=args.seeds,
        device=args.device,
        train_config=config,
        encoder=encoder,
        progress=progress,
    )
    if args.baseline:
        from dal_widgets.baselines import label_spreading_baseline

        counts = sorted({r["labels"] for r in result.records})
        result.records += label_spreading_baseline(ds, counts, args.seeds)
    wall = time.perf_counter() - t0
    print()
    print("Held-out accuracy by number of labels:")
    print(result.table())
    print(f"\nwall time: {wall:.1f} s")
    if args.out:
        from dal_widgets.widgets._figures import report_html

        summary = {
            "dataset": repr(ds),
            "strategies": ", ".join(names),
            "initial labels": args.initial,
            "batch": args.batch,
            "budget": budget,
            "seeds": args.seeds,
            "encoder": args.encoder,
            "label spreading": args.label_spreading,
            "scikit-learn baseline": args.baseline,
            "wall time": f"{wall:.1f} s",
        }
        out = Path(args.out)
        out.write_text(
            report_html(result, title=f"dal_widgets demo: {ds.name}", summary=summary),
            encoding="utf-8",
        )
        print(f"report: {out.resolve()} ({os.path.getsize(out) / 1e6:.1f} MB, opens offline)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return demo(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
