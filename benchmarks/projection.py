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

    python benchmarks/projection.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time

FRESH = textwrap.dedent("""
    import time
    t0 = time.perf_counter()
    import numpy as np
    import dal_widgets as dal
    from dal_widgets.projection import Projector
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64)) * 4
    X = (centers[np.arange(10_000) % 10] + rng.normal(size=(10_000, 64))).astype(np.float32)
    ds = dal.datasets.from_arrays(X, y=np.arange(10_000) % 10)
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
    parser.add_argument("--quick", action="store_true", help="only N=10,000, D=64")
    args = parser.parse_args()

    print("fresh process: seconds to first paint (PCA) / to first UMAP, N=10,000, D=64")
    for attempt in range(2):
        out = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=900)
        if out.returncode:
            print(out.stderr[-2000:])
            raise SystemExit(1)
        paint, first_umap = out.stdout.split()
        print(f"  run {attempt + 1}: first paint {float(paint):.2f} s, first UMAP {float(first_umap):.2f} s")

    import numpy as np

    from dal_widgets.projection import _subsample, align, place_on_anchors, umap_2d

    sizes = [(10_000, 64)] if args.quick else [(10_000, 64), (10_000, 512), (50_000, 64), (50_000, 512)]
    # Warm-up: numba compiles UMAP on first use and torch sets up its kernels; measured above.
    warm = clustered(2_000, 16, 5)
    c = umap_2d(warm, seed=0)
    umap_2d(warm[:1_500], seed=0, sample=1_000, init=c[:1_500])
    place_on_anchors(warm, np.arange(0, 2_000, 4), c[::4])
    print("\nN       D    fit s   refit s  refresh s  refit/refresh  moved refit  moved refresh  clusters kept refit  refresh")
    for n, d in sizes:
        X1 = clustered(n, d, 0)
        labels = np.arange(n) % 10
        rng = np.random.default_rng(1)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        X2 = (X1 @ q + rng.normal(scale=0.3, size=X1.shape)).astype(np.float32)
        t = time.perf_counter()
        c1 = umap_2d(X1, seed=0)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        c_refit = align(umap_2d(X2, seed=0, init=c1), c1)
        refit_s = time.perf_counter() - t
        t = time.perf_counter()
        rows = _subsample(n, 2_000, 0)
        c_ref = place_on_anchors(X2, rows, c1[rows])
        refresh_s = time.perf_counter() - t
        spread = float(c1.std())
        moved_refit = float(np.linalg.norm(c_refit - c1, axis=1).mean() / spread)
        moved_ref = float(np.linalg.norm(c_ref - c1, axis=1).mean() / spread)
        print(f"{n:<7d} {d:<4d} {fit_s:7.1f} {refit_s:8.1f} {refresh_s:9.2f} {refit_s / refresh_s:12.1f}x "
              f"{moved_refit:11.3f} {moved_ref:13.3f} {cluster_kept(c_refit, labels):19.3f} {cluster_kept(c_ref, labels):8.3f}")
    print("\ntarget: refresh >= 5x faster than refit. moved = mean displacement / layout spread;")
    print("clusters kept = share of each point's 10 nearest map neighbours from its own cluster.")


if __name__ == "__main__":
    main()
