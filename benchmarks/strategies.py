"""Speed and memory of the strategy library against naive references measured in the same run.

Usage::

    python benchmarks/strategies.py            # the full set (about 10 minutes on 2 cores)
    python benchmarks/strategies.py --quick    # small sizes, a minute; figures are indicative
    python benchmarks/strategies.py --only coreset,badge --repeat 5 --wait-quiet 30

Each case runs in fresh subprocesses, one for the timings and one for the memory, so one
case's memory cannot hide in another's heap and the memory accounting cannot slow the timings.
Times are medians over ``--repeat`` runs (the slow references run once), ours and the
reference's calls alternating. "peak extra" is the largest rise of the resident set size
during one call above what the inputs already use (Linux ``VmHWM``, reset before the call via
``/proc/self/clear_refs``, with every allocation above 128 kB mapped on its own so that freed
memory leaves the resident set; elsewhere the tracemalloc peak, which sees numpy but not
torch). On a GPU the torch-based strategies also run on CUDA, their peak being
``torch.cuda.max_memory_allocated``.

The references are what one would write without this library: the score arithmetic in plain
numpy plus ``np.argpartition``; BALD in plain numpy over chunks of 10,000 rows; core-set from
the N x N distance matrix; BADGE as numpy k-means++ on the explicit N x (C*D) gradient
embeddings (with the same random draws, so the picks can be compared). The targets are those
of the project's issue 3, for 2 CPU cores and C = 10; with ``--quick`` they are not judged.
The "load" column is the largest share of the CPU other processes took during a timed call:
on a shared machine, a high load makes a row's figures unreliable (``--wait-quiet`` helps).

Prints the table and writes ``benchmarks/results/strategies.json`` and
``strategies-speedup.png`` through the shared harness (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _harness import Measurement, Report, call_once, compare, ratio

__all__ = ["main"]

C = 10
MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Measuring (the harness times one call; here: ours and the reference in alternation)

#: Before each timed call, wait (up to this many seconds) for other processes to go quiet.
WAIT_QUIET = 0.0
#: In a memory run each measurement calls ours once and skips the reference.
MEMORY_RUN = False


def measure_pair(
    fn: Callable[[], Any],
    repeats: int,
    device: str = "cpu",
    ref: Callable[[], Any] | None = None,
    ref_repeats: int | None = None,
) -> tuple[Measurement, Measurement | None]:
    """Seconds and peak extra memory of ``fn`` (and of ``ref``, on the CPU, if given).

    Calls alternate between the two, so a neighbour's load on a shared machine falls on both
    alike rather than on whichever ran during it; ``load`` is the largest share of the CPU
    that other processes used during any of the calls.
    """
    ref_repeats = repeats if ref_repeats is None else ref_repeats
    if MEMORY_RUN:
        ours = Measurement.from_calls([call_once(fn, device=device, quiet=WAIT_QUIET)])
        dummy = Measurement([float("nan")], result=ours.result)
        return ours, (dummy if ref is not None and ref_repeats else None)
    if ref is None:
        ref_repeats = 0
    naive, ours = compare(
        ref or (lambda: None),
        fn,
        warmup=0,
        repeat=repeats,
        baseline_repeat=ref_repeats,
        device=device,
        quiet=WAIT_QUIET,
    )
    return ours, naive


# ---------------------------------------------------------------------------------------------
# Inputs (seeded, built in place so building them leaves no garbage behind)


def softmax_rows(shape: tuple[int, ...], seed: int, sharpness: float = 2.0) -> np.ndarray:
    """Random float32 probabilities of the given shape, normalized over the last axis."""
    rng = np.random.default_rng(seed)
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1, shape[-1])
    step = 1 << 16
    for s in range(0, flat.shape[0], step):
        block = rng.standard_normal((min(step, flat.shape[0] - s), shape[-1]), np.float32)
        block *= sharpness
        np.exp(block, out=block)
        block /= block.sum(axis=1, keepdims=True)
        flat[s : s + block.shape[0]] = block
    return out


def mc_passes(n: int, t: int, seed: int) -> np.ndarray:
    """(N, T, C) MC-dropout-like probabilities: per-sample logits plus per-pass noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, t, C), np.float32)
    step = 1 << 14
    for s in range(0, n, step):
        m = min(step, n - s)
        logits = 2.0 * rng.standard_normal((m, 1, C), np.float32)
        logits = logits + rng.standard_normal((m, t, C), np.float32)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=2, keepdims=True)
        out[s : s + m] = logits
    return out


def clustered(n: int, d: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Float32 embeddings in Gaussian clusters, like a trained network's penultimate layer."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), np.float32)
    out = np.empty((n, d), np.float32)
    step = 1 << 15
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s : s + m] = centres[rng.integers(clusters, size=m)]
        out[s : s + m] += 0.5 * rng.standard_normal((m, d), np.float32)
    return out


def labeled(n: int, count: int, seed: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=count, replace=False)] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Naive references


def ref_top(scores: np.ndarray, n: int) -> np.ndarray:
    return np.argpartition(scores, -n)[-n:]


def ref_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.maximum(p, np.finfo(p.dtype).tiny))).sum(axis=1)


def ref_margin(p: np.ndarray) -> np.ndarray:
    part = np.partition(p, p.shape[1] - 2, axis=1)
    return part[:, -2] - part[:, -1]


def ref_least_confidence(p: np.ndarray) -> np.ndarray:
    return 1.0 - p.max(axis=1)


def ref_bald(mc: np.ndarray, chunk: int = 10_000) -> np.ndarray:
    out = np.empty(mc.shape[0])
    tiny = np.finfo(mc.dtype).tiny
    for s in range(0, mc.shape[0], chunk):
        p = mc[s : s + chunk]
        mean = p.mean(axis=1)
        h_mean = -(mean * np.log(np.maximum(mean, tiny))).sum(axis=1)
        e_h = -(p * np.log(np.maximum(p, tiny))).sum(axis=2).mean(axis=1)
        out[s : s + chunk] = h_mean - e_h
    return out


def ref_coreset(x: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Textbook k-center greedy on the full N x N distance matrix."""
    sq = np.einsum("ij,ij->i", x, x)
    dist = x @ x.T
    dist *= -2.0
    dist += sq[:, None]
    dist += sq[None, :]
    np.maximum(dist, 0.0, out=dist)
    np.sqrt(dist, out=dist)
    lab = np.flatnonzero(mask)
    min_d = dist[:, lab].min(axis=1)
    min_d[lab] = -1.0
    picks = []
    for _ in range(n):
        j = int(np.argmax(min_d))
        picks.append(j)
        np.minimum(min_d, dist[j], out=min_d)
        min_d[picks] = -1.0
    return np.asarray(picks)


def cover_radius(x: np.ndarray, mask: np.ndarray, picks: Any) -> float:
    """Largest distance from a point to its nearest centre (labeled or picked), in float64."""
    centres = x[np.concatenate([np.flatnonzero(mask), np.asarray(picks)])].astype(np.float64)
    sq_c = np.einsum("ij,ij->i", centres, centres)
    worst = 0.0
    for s in range(0, x.shape[0], 4096):
        block = x[s : s + 4096].astype(np.float64)
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + sq_c[None, :] - 2 * block @ centres.T
        worst = max(worst, float(d2.min(axis=1).max()))
    return float(np.sqrt(max(worst, 0.0)))


def ref_badge(probs: np.ndarray, h: np.ndarray, n: int, seed: int) -> np.ndarray:
    """k-means++ on explicit gradient embeddings, with the library's draws."""
    rng = np.random.default_rng(seed)
    a = probs.copy()
    a[np.arange(a.shape[0]), a.argmax(axis=1)] -= 1.0
    g = (a[:, :, None] * h[:, None, :]).reshape(a.shape[0], -1)
    g2 = np.einsum("ij,ij->i", g, g)
    picks = [int(np.argmax(g2))]
    best = np.full(g.shape[0], np.inf, np.float32)
    for _ in range(n):
        c = picks[-1]
        d2 = g2 + g2[c] - 2.0 * (g @ g[c])
        np.minimum(best, np.maximum(d2, 0.0), out=best)
        best[picks] = 0.0
        if len(picks) == n:
            break
        cum = np.cumsum(best, dtype=np.float64)
        picks.append(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")))
    return np.asarray(picks)


# ---------------------------------------------------------------------------------------------
# Cases: each returns rows of the result table


def _row(
    case, ours, ref=None, target="", met=None, note="", base=None, peak_limit=None, min_ratio=None
):
    """One table row. ``met`` is the speed part of the target; with ``peak_limit`` (bytes) the
    driver also requires the peak from the memory run to stay under it."""
    row = {"case": case, "ours": ours.median, "runs": ours.n, "peak": ours.peak_bytes}
    row["ours_best"] = ours.min
    row["ref_best"] = None if ref is None else ref.min
    loads = [m.load for m in (ours, ref) if m is not None and m.load is not None]
    row["load"] = max(loads) if loads else None
    row["ref"] = None if ref is None else ref.median
    row["ratio"] = None if ref is None else ratio(ref, ours)
    row["base"] = base
    row.update(target=target, met=met, note=note, peak_limit=peak_limit, min_ratio=min_ratio)
    return row


def case_uncertainty(size: dict, repeats: int, device: str) -> list[dict]:
    from dal_widgets import strategies

    n = size["uncertainty_n"]
    p = softmax_rows((n, C), 0)
    rows = []
    refs = {"entropy": ref_entropy, "margin": ref_margin, "least_confidence": ref_least_confidence}
    for name, ref in refs.items():
        strategies.select(name, 100, probs=p[:1000], rng=0)  # warm up
        ours, naive = measure_pair(
            lambda name=name: strategies.select(name, 100, probs=p, rng=0),
            repeats,
            ref=lambda ref=ref: ref_top(ref(p), 100),
        )
        same = len(set(ours.result) & set(naive.result))
        slower = ours.median / naive.median
        rows.append(
            _row(
                f"{name} top-100, N={n:,}",
                ours,
                naive,
                "<= 1.5x numpy + argpartition",
                slower <= 1.5,
                f"{slower:.2f}x the reference's time; {same}/100 same picks",
                min_ratio=1 / 1.5,
            )
        )
    return rows


def case_bald(size: dict, repeats: int, device: str) -> list[dict]:
    from dal_widgets import strategies

    n, t = size["bald_n"], 20
    mc = mc_passes(n, t, 1)
    strategies.select("bald", 10, mc_probs=mc[:1000], rng=0)
    ours, naive = measure_pair(
        lambda: strategies.select("bald", 100, mc_probs=mc, rng=0),
        repeats,
        ref=lambda: ref_top(ref_bald(mc), 100),
    )
    ok = ours.median <= naive.median
    same = len(set(ours.result) & set(naive.result))
    return [
        _row(
            f"bald top-100, N={n:,}, T={t}",
            ours,
            naive,
            "<= numpy chunks, < 1 GB",
            ok,
            f"input {mc.nbytes / MB:,.0f} MB; {same}/100 same picks",
            peak_limit=1024 * MB,
            min_ratio=1.0,
        )
    ]


def case_batchbald(size: dict, repeats: int, device: str) -> list[dict]:
    from dal_widgets import strategies

    n, t, b = size["batchbald_n"], 20, 10
    mc = mc_passes(n, t, 2)
    rows = []
    for dev in _devices(device):
        strategies.select("batchbald", 2, mc_probs=mc[:200], rng=0, device=dev)
        ours, _ = measure_pair(
            lambda dev=dev: strategies.select("batchbald", b, mc_probs=mc, rng=0, device=dev),
            repeats,
            dev,
        )
        ok = ours.median < 10
        rows.append(
            _row(
                f"batchbald B={b}, N={n:,}, T={t} [{dev}]",
                ours,
                target="< 10 s, < 1 GB",
                met=ok,
                note="num_samples=1000 (exact up to 3 picks)",
                peak_limit=1024 * MB,
            )
        )
    return rows


def case_coreset(size: dict, repeats: int, device: str) -> list[dict]:
    from dal_widgets import strategies

    n, d, lab, b = size["coreset_n"], 512, size["coreset_labeled"], size["coreset_b"]
    x = clustered(n, d, 3)
    mask = labeled(n, lab, 4)
    rows, naive_cpu = [], None
    for dev in _devices(device):
        strategies.select("coreset", 2, embeddings=x[:500], rng=0, device=dev)
        ours, naive = measure_pair(
            lambda dev=dev: strategies.select(
                "coreset", b, embeddings=x, labeled_mask=mask, rng=0, device=dev
            ),
            repeats,
            dev,
            ref=lambda: ref_coreset(x, mask, b),
            ref_repeats=1 if naive_cpu is None else 0,  # numpy: measured once, on the CPU
        )
        naive_cpu = naive = naive or naive_cpu
        speedup = ratio(naive, ours)
        ok = speedup >= 10
        same = _same_prefix(ours.result, naive.result)
        radius = cover_radius(x, mask, ours.result) / cover_radius(x, mask, naive.result)
        rows.append(
            _row(
                f"coreset B={b}, N={n:,}, D={d}, {lab:,} labeled [{dev}]",
                ours,
                naive,
                ">= 10x N x N, < 5x emb.",
                ok,
                f"emb. {x.nbytes / MB:.0f} MB; first {same}/{b} picks identical, then float32 "
                f"near-ties; cover radius {radius:.4f}x the reference's",
                base=x.nbytes,
                peak_limit=5 * x.nbytes,
                min_ratio=10.0,
            )
        )
    return rows


def case_coreset_large(size: dict, repeats: int, device: str) -> list[dict]:
    from dal_widgets import strategies

    n, d, lab, b = size["coreset_large_n"], 128, 1000, 100
    x = clustered(n, d, 5)
    mask = labeled(n, lab, 6)
    rows = []
    for dev in _devices(device):
        strategies.select("coreset", 2, embeddings=x[:500], rng=0, device=dev)
        ours, _ = measure_pair(
            lambda dev=dev: strategies.select(
                "coreset", b, embeddings=x, labeled_mask=mask, rng=0, device=dev
            ),
            1,
            dev,
        )
        rows.append(
            _row(
                f"coreset B={b}, N={n:,}, D={d}, {lab:,} labeled [{dev}]",
                ours,
                target="completes",
                met=True,
                note=f"emb. {x.nbytes / MB:.0f} MB",
                base=x.nbytes,
            )
        )
    return rows


def case_badge(size: dict, repeats: int, device: str) -> list[dict]:
    from dal_widgets import strategies

    n, d, b = size["badge_n"], 128, size["badge_b"]
    probs = softmax_rows((n, C), 7)
    h = clustered(n, d, 8)
    rows, naive_cpu = [], None
    for dev in _devices(device):
        strategies.select("badge", 2, probs=probs[:500], embeddings=h[:500], rng=0, device=dev)
        ours, naive = measure_pair(
            lambda dev=dev: strategies.select(
                "badge", b, probs=probs, embeddings=h, rng=0, device=dev
            ),
            repeats,
            dev,
            ref=lambda: ref_badge(probs, h, b, 0),
            ref_repeats=1 if naive_cpu is None else 0,  # numpy: measured once, on the CPU
        )
        naive_cpu = naive = naive or naive_cpu
        speedup = ratio(naive, ours)
        ok = speedup >= 5
        same = _same_prefix(ours.result, naive.result)
        rows.append(
            _row(
                f"badge B={b}, N={n:,}, D={d} [{dev}]",
                ours,
                naive,
                ">= 5x explicit, < 5x emb.",
                ok,
                f"emb. {h.nbytes / MB:.1f} MB; first {same}/{b} picks identical",
                base=h.nbytes,
                peak_limit=5 * h.nbytes,
                min_ratio=5.0,
            )
        )
    return rows


def _same_prefix(a: Any, b: Any) -> int:
    """How many picks agree before the first difference."""
    a, b = np.asarray(a), np.asarray(b)
    diff = np.flatnonzero(a[: b.size] != b[: a.size])
    return int(diff[0]) if diff.size else int(min(a.size, b.size))


def _devices(device: str) -> list[str]:
    import torch

    if device == "cpu":
        return ["cpu"]
    if device == "cuda":
        return ["cuda"]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


CASES = {
    "uncertainty": case_uncertainty,
    "bald": case_bald,
    "batchbald": case_batchbald,
    "coreset": case_coreset,
    "coreset_large": case_coreset_large,
    "badge": case_badge,
}

FULL = {
    "uncertainty_n": 1_000_000,
    "bald_n": 1_000_000,
    "batchbald_n": 10_000,
    "coreset_n": 20_000,
    "coreset_labeled": 1_000,
    "coreset_b": 1_000,
    "coreset_large_n": 1_000_000,
    "badge_n": 50_000,
    "badge_b": 1_000,
}
QUICK = {
    "uncertainty_n": 200_000,
    "bald_n": 100_000,
    "batchbald_n": 2_000,
    "coreset_n": 5_000,
    "coreset_labeled": 250,
    "coreset_b": 250,
    "coreset_large_n": 100_000,
    "badge_n": 10_000,
    "badge_b": 200,
}


# ---------------------------------------------------------------------------------------------
# Driver


def _run_worker(name: str, args: argparse.Namespace, memory: bool) -> list[dict] | None:
    cmd = [sys.executable, __file__, "--worker", name, "--repeat", str(args.repeat)]
    cmd += ["--wait-quiet", str(args.wait_quiet), "--device", args.device]
    cmd += (["--quick"] if args.quick else []) + (["--memory"] if memory else [])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if memory else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not found:
        print(f"case {name!r} failed:\n{proc.stdout}\n{proc.stderr}", file=sys.stderr)
        return None
    return json.loads(found[-1][len("RESULT ") :])


def _worker(case: str, quick: bool, repeats: int, device: str) -> None:
    rows = CASES[case](QUICK if quick else FULL, repeats, device)
    for row in rows:
        row.pop("out", None)
    print("RESULT " + json.dumps(rows))


def _fmt_mb(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MB:,.1f}"


COLUMNS = ["case", "ours s", "ref s", "speedup", "peak extra MB", "load", "target", "met", "notes"]


def _table_rows(rows: list[dict], quick: bool) -> list[list[str]]:
    lines = []
    for r in rows:
        peak = _fmt_mb(r["peak"])
        if r.get("base"):
            peak += f" ({r['peak'] / r['base']:.2f}x)"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        if quick and r["met"] is not None:
            met = f"({met})"
        ours = f"{r['ours']:.3f} [{r['ours_best']:.3f}] x{r['runs']}"
        ref = "-" if r["ref"] is None else f"{r['ref']:.3f} [{r['ref_best']:.3f}]"
        load = "-" if r["load"] is None else f"{100 * r['load']:.0f}%"
        lines.append(
            [
                r["case"],
                ours,
                ref,
                "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                peak,
                load,
                r["target"],
                met,
                r["note"],
            ]
        )
    return lines


def _figure(report: Report, rows: list[dict]) -> None:
    """Speedup against the reference (with each target's bar) and our seconds, per case."""
    from matplotlib.ticker import FuncFormatter

    colour = {True: "tab:green", False: "tab:red", None: "tab:gray"}
    timed = rows[::-1]  # first case on top
    compared = [r for r in timed if r["ratio"] is not None]
    fig, (ax1, ax2) = report.subplots(1, 2, figsize=(12, 0.45 * len(timed) + 1.8))
    if compared:
        y = np.arange(len(compared))
        values = [r["ratio"] for r in compared]
        limits = [r["min_ratio"] for r in compared if r["min_ratio"] is not None]
        low, high = min([0.5, *values, *limits]) / 1.5, max([2.0, *values, *limits]) * 2.5
        ax1.barh(y, [v - low for v in values], left=low, color=[colour[r["met"]] for r in compared])
        for yi, r in zip(y, compared):
            if r["min_ratio"] is not None:
                ax1.plot([r["min_ratio"]] * 2, [yi - 0.4, yi + 0.4], color="black", lw=2)
            ax1.text(r["ratio"], yi, f" {r['ratio']:.2f}x", va="center", fontsize=8)
        ax1.set_xscale("log")
        ax1.set_xlim(low, high)
        ax1.axvline(1.0, color="gray", lw=0.8, ls=":")
        ax1.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax1.set_yticks(y, [r["case"] for r in compared], fontsize=8)
    ax1.set_xlabel("reference s / ours s (medians); black bar: the target")
    ax1.set_title("Speedup against the naive reference (same run)", fontsize=10)
    y2 = np.arange(len(timed))
    ax2.barh(y2, [r["ours"] for r in timed], color=[colour[r["met"]] for r in timed])
    ax2.set_xscale("log")
    ax2.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax2.set_yticks(y2, [r["case"] for r in timed], fontsize=8)
    ax2.set_xlabel("seconds per call (median)")
    ax2.set_title("Our seconds per call", fontsize=10)
    fig.suptitle("green: target met, red: not met, gray: no target", fontsize=9)
    report.figure(
        fig,
        "speedup",
        "Speedup of each strategy against its naive reference (log scale; black bars: the "
        "targets) and seconds per call.",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--only", default="", help="comma-separated cases: " + ", ".join(CASES))
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timed call wait up to S seconds for other processes to go quiet",
    )
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global MEMORY_RUN, WAIT_QUIET
    WAIT_QUIET, MEMORY_RUN = args.wait_quiet, args.memory
    if args.worker:
        _worker(args.worker, args.quick, args.repeat, args.device)
        return 0
    names = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    report = Report(
        "strategies", "Strategy speed and memory against naive references", quick=args.quick
    )
    rows: list[dict] = []
    for name in names:
        start = time.perf_counter()
        # Timing and memory come from separate fresh processes. For memory, allocations above
        # 128 kB are mapped and unmapped one by one, so the resident set tracks live memory
        # exactly; that costs page faults, which must not count in the timings.
        timed = _run_worker(name, args, memory=False)
        sized = _run_worker(name, args, memory=True)
        if timed is None or sized is None:
            return 1
        for row, mem in zip(timed, sized, strict=True):
            row["peak"] = mem["peak"]
            if row["met"] is not None and row["peak_limit"] is not None:
                row["met"] = bool(row["met"] and row["peak"] < row["peak_limit"])
        rows.extend(timed)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)

    report.table("Strategies against naive references", COLUMNS, _table_rows(rows, args.quick))
    for r in rows:
        if r["met"] is None:
            continue
        value = f"{r['ratio']:.2f}x" if r["ratio"] is not None else f"{r['ours']:.2f} s"
        peak = (
            _fmt_mb(r["peak"])
            + " MB"
            + (f" ({r['peak'] / r['base']:.2f}x emb.)" if r.get("base") else "")
        )
        report.target(
            r["case"], f"{value}, peak {peak}", r["target"], None if args.quick else r["met"]
        )
    report.note(
        "seconds: median [best] of the runs; speedup = reference / ours (medians), targets use "
        "medians. load: the largest share of the CPU other processes used during a timed call "
        "(a high load makes a row unreliable)."
    )
    report.note(
        "peak extra: the largest rise of the resident set during one call above the inputs, "
        "from a separate process with MALLOC_MMAP_THRESHOLD_=131072 (CUDA rows: "
        "torch.cuda.max_memory_allocated)."
    )
    if args.quick:
        report.note(
            "--quick: reduced sizes; targets are judged at full size only (shown in brackets)."
        )
    report.data["rows"] = rows
    report.data["sizes"] = QUICK if args.quick else FULL
    _figure(report, rows)
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
