"""The map's projection: first paint, first UMAP, and per-round refresh against a refit.

1. In a fresh Python process: time from nothing to the first paint (a PCA map) and to the first
   UMAP map, with the numba cache as it is (run twice to see a warm cache).
2. At N = 10,000 and 50,000 with D = 64 and 512: a first UMAP fit on "round-k embeddings", then
   "round-k+1 embeddings" (the same structure in a new space: a random rotation plus noise)
   mapped two ways: a full refit (UMAP started from the previous layout, then aligned) and the
   anchor refresh the Projector uses between refits. Target (issue 6): refresh >= 5x faster
   than refit. Also printed: how far points move (mean displacement / layout spread) and how
   well clusters stay together on the map (share of 10 nearest map neighbours from the same
   cluster, 1,000 points).

    python benchmarks/projection.py [--quick] [--sizes 10000x64,50000x512] [--fresh-runs 2]

``--quick``: a smoke run of about a minute (one fresh process at N=2,000, one size N=2,000,
D=16; the refresh target is not judged there); ``--sizes 10000x64`` is what ``--quick`` used
to run. Prints the figures and writes
``benchmarks/results/projection.json`` with ``projection-times.png`` (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

from _harness import MB, Measurement, Report, measure, ratio

FRESH = textwrap.dedent("""
    import sys, time
    t0 = time.perf_counter()
    n = int(sys.argv[1])
    import numpy as np
    import dal_widgets as dal
    from dal_widgets.projection import Projector
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64)) * 4
    X = (centers[np.arange(n) % 10] + rng.normal(size=(n, 64))).astype(np.float32)
    ds = dal.datasets.from_arrays(X, y=np.arange(n) % 10)
    s = dal.Session(ds, store=None, device="cpu")
    p = Projector(s, method="umap")
    t1 = time.perf_counter()
    p.refresh(block=True)
    t2 = time.perf_counter()
    assert p.error is None and p.current().method == "umap", p.error
    print(f"{t1 - t0:.2f} {t2 - t0:.2f}")
""")


def clustered(n, d, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, d)) * 4
    return (centers[np.arange(n) % 10] + rng.normal(size=(n, d))).astype(np.float32)


def cluster_kept(coords, labels, k=10, m=1000, seed=0):
    """Share of each point's 10 nearest map neighbours that come from its own cluster."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(coords), size=min(m, len(coords)), replace=False)
    d = ((coords[rows, None, :] - coords[None, :, :]) ** 2).sum(-1)  # (1,000, N) for a metric only
    d[np.arange(len(rows)), rows] = np.inf
    nn = np.argpartition(d, k, axis=1)[:, :k]
    return float((labels[nn] == labels[rows, None]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one fresh run and N=2,000, D=16: about a minute"
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma-separated NxD (default 10000x64,10000x512,50000x64,50000x512)",
    )
    parser.add_argument("--fresh-runs", type=int, default=None, help="default 2 (--quick: 1)")
    args = parser.parse_args()
    fresh_n = 2_000 if args.quick else 10_000
    fresh_runs = args.fresh_runs if args.fresh_runs is not None else (1 if args.quick else 2)
    if args.sizes:
        sizes = [tuple(int(v) for v in nd.lower().split("x")) for nd in args.sizes.split(",")]
    elif args.quick:
        sizes = [(2_000, 16)]
    else:
        sizes = [(10_000, 64), (10_000, 512), (50_000, 64), (50_000, 512)]
    judged = not args.quick  # at quick sizes the 2,000 anchors are the whole pool
    report = Report(
        "projection", "Map projection: first paint, UMAP refit and anchor refresh", quick=args.quick
    )

    print(f"fresh process: seconds to first paint (PCA) / to first UMAP, N={fresh_n:,}, D=64")
    fresh = []
    for attempt in range(fresh_runs):
        out = subprocess.run(
            [sys.executable, "-c", FRESH, str(fresh_n)], capture_output=True, text=True, timeout=900
        )
        if out.returncode:
            print(out.stderr[-2000:])
            raise SystemExit(1)
        paint, first_umap = (float(v) for v in out.stdout.split())
        fresh.append((paint, first_umap))
        print(f"  run {attempt + 1}: first paint {paint:.2f} s, first UMAP {first_umap:.2f} s")

    import numpy as np

    from dal_widgets.projection import _subsample, align, place_on_anchors, umap_2d

    # Warm-up: numba compiles UMAP on first use and torch sets up its kernels; measured above.
    warm = clustered(2_000, 16, 5)
    c = umap_2d(warm, seed=0)
    umap_2d(warm[:1_500], seed=0, sample=1_000, init=c[:1_500])
    place_on_anchors(warm, np.arange(0, 2_000, 4), c[::4])
    print(
        "\nN       D    fit s   refit s  refresh s  refit/refresh  moved refit  moved refresh  clusters kept refit  refresh"
    )
    results = []
    for n, d in sizes:
        X1 = clustered(n, d, 0)
        labels = np.arange(n) % 10
        rng = np.random.default_rng(1)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        X2 = (X1 @ q + rng.normal(scale=0.3, size=X1.shape)).astype(np.float32)
        # One call each (UMAP at these sizes takes seconds to minutes), with its peak memory.
        fit = measure(lambda X1=X1: umap_2d(X1, seed=0), warmup=0, repeat=1)
        c1 = fit.result
        refit = measure(
            lambda X2=X2, c1=c1: align(umap_2d(X2, seed=0, init=c1), c1), warmup=0, repeat=1
        )
        c_refit = refit.result

        def anchor_refresh(n=n, X2=X2, c1=c1):
            rows = _subsample(n, 2_000, 0)
            return place_on_anchors(X2, rows, c1[rows])

        refresh = measure(anchor_refresh, warmup=0, repeat=1)
        c_ref = refresh.result
        spread = float(c1.std())
        moved_refit = float(np.linalg.norm(c_refit - c1, axis=1).mean() / spread)
        moved_ref = float(np.linalg.norm(c_ref - c1, axis=1).mean() / spread)
        kept_refit, kept_ref = cluster_kept(c_refit, labels), cluster_kept(c_ref, labels)
        speedup = ratio(refit, refresh)
        print(
            f"{n:<7d} {d:<4d} {fit.median:7.1f} {refit.median:8.1f} {refresh.median:9.2f} {speedup:12.1f}x "
            f"{moved_refit:11.3f} {moved_ref:13.3f} {kept_refit:19.3f} {kept_ref:8.3f}"
        )
        results.append(
            {
                "n": n,
                "d": d,
                "fit": fit,
                "refit": refit,
                "refresh": refresh,
                "speedup": speedup,
                "moved_refit": moved_refit,
                "moved_refresh": moved_ref,
                "kept_refit": kept_refit,
                "kept_refresh": kept_ref,
            }
        )
    print("\ntarget: refresh >= 5x faster than refit. moved = mean displacement / layout spread;")
    print("clusters kept = share of each point's 10 nearest map neighbours from its own cluster.")

    report.table(
        f"Fresh Python process, N={fresh_n:,}, D=64: seconds from nothing to the first paint (PCA) "
        "and to the first UMAP map",
        ["run", "first paint s", "first UMAP s"],
        [[i + 1, f"{p:.2f}", f"{u:.2f}"] for i, (p, u) in enumerate(fresh)],
    )
    report.table(
        "Next round's embeddings: full UMAP refit against the anchor refresh (one call each)",
        [
            "N",
            "D",
            "fit s",
            "refit s",
            "refresh s",
            "refit/refresh",
            "moved refit",
            "moved refresh",
            "clusters kept refit",
            "clusters kept refresh",
            "peak MB fit / refit / refresh",
        ],
        [
            [
                f"{r['n']:,}",
                r["d"],
                f"{r['fit'].median:.1f}",
                f"{r['refit'].median:.1f}",
                f"{r['refresh'].median:.2f}",
                f"{r['speedup']:.1f}x",
                f"{r['moved_refit']:.3f}",
                f"{r['moved_refresh']:.3f}",
                f"{r['kept_refit']:.3f}",
                f"{r['kept_refresh']:.3f}",
                " / ".join(_mb(r[k]) for k in ("fit", "refit", "refresh")),
            ]
            for r in results
        ],
    )
    for r in results:
        report.target(
            f"refresh vs refit, N={r['n']:,}, D={r['d']}",
            f"{r['speedup']:.1f}x",
            ">= 5x faster",
            r["speedup"] >= 5 if judged else None,
        )
    report.note(
        "refit/refresh = refit seconds / refresh seconds, same run. moved = mean displacement / "
        "layout spread; clusters kept = share of each point's 10 nearest map neighbours from its "
        "own cluster (1,000 points)."
    )
    report.note(
        "peak MB: rise of the resident set's high-water mark during the call (glibc may keep "
        "freed memory, so a later call can reuse it and show less)."
    )
    report.note(
        "first paint/first UMAP include the imports and the numba cache as it was: run 1 may "
        "compile, run 2 shows the warm cache."
    )
    if args.quick:
        report.note(
            "--quick: one fresh process at N=2,000 and one size, N=2,000, D=16, where the "
            "2,000 anchors are the whole pool: the refresh target is not judged."
        )
    report.data.update(
        fresh=[{"first_paint_s": p, "first_umap_s": u} for p, u in fresh], sizes=results
    )
    _figure(report, fresh, results, fresh_n)
    report.save()


def _mb(m: Measurement) -> str:
    return "-" if m.peak_bytes is None else f"{m.peak_bytes / MB:,.0f}"


def _figure(report: Report, fresh, results, fresh_n: int) -> None:
    import numpy as np

    fig, (ax1, ax2) = report.subplots(
        1, 2, figsize=(11, 4), width_ratios=[1, max(1.5, 0.8 * len(results))]
    )
    runs = np.arange(len(fresh))
    ax1.bar(runs - 0.2, [p for p, _ in fresh], 0.4, label="first paint (PCA)")
    ax1.bar(runs + 0.2, [u for _, u in fresh], 0.4, label="first UMAP")
    ax1.set_xticks(runs, [f"run {i + 1}" for i in runs])
    ax1.set_xlim(-0.8, len(fresh) - 0.2)
    ax1.set_ylabel("seconds from a fresh process")
    ax1.set_title(f"Fresh process, N={fresh_n:,}, D=64", fontsize=10)
    ax1.legend(fontsize=8)

    x = np.arange(len(results))
    for i, (key, label) in enumerate(
        [("fit", "first UMAP fit"), ("refit", "refit (next round)"), ("refresh", "anchor refresh")]
    ):
        ax2.bar(x + (i - 1) * 0.27, [r[key].median for r in results], 0.27, label=label)
    for xi, r in zip(x, results):
        ax2.text(
            xi + 0.27,
            r["refresh"].median,
            f"{r['speedup']:.0f}x",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax2.set_yscale("log")
    ax2.set_xlim(-0.8, len(results) - 0.2)
    ax2.set_xticks(x, [f"N={r['n']:,}\nD={r['d']}" for r in results])
    ax2.set_ylabel("seconds (log scale)")
    ax2.set_title("Next round: refit against anchor refresh (label: refit/refresh)", fontsize=10)
    ax2.legend(fontsize=8)
    report.figure(
        fig,
        "times",
        "Left: seconds from a fresh process to the first paint and the first UMAP map. Right: "
        "first UMAP fit, a full refit and the anchor refresh for the next round's embeddings "
        "(target: refresh >= 5x faster than refit).",
    )


if __name__ == "__main__":
    main()
