"""Run the benchmarks, each in a fresh process, and render ``BENCHMARKS.md`` from their results.

Each script writes ``benchmarks/results/<name>.json`` and its PNG figures through
``benchmarks/_harness.py``; this script runs them one after another with the project's Python
and then renders every results file into ``BENCHMARKS.md`` at the repository root (tables,
targets, figures and notes, label efficiency first). Nothing in ``BENCHMARKS.md`` is typed by
hand.

    python benchmarks/run_all.py                         # the speed suite, then BENCHMARKS.md
    python benchmarks/run_all.py --quick                 # smoke runs of seconds to a minute each
    python benchmarks/run_all.py --only strategies,widgets
    python benchmarks/run_all.py --skip map_browser
    python benchmarks/run_all.py --with-label-efficiency # also the hour-long label efficiency
    python benchmarks/run_all.py --render-only           # BENCHMARKS.md from the existing JSONs

``label_efficiency`` runs only with ``--with-label-efficiency`` (or when named in ``--only``),
but its results file, when present, is always rendered. Results of ``--quick`` runs are marked
as such, loudly, in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _harness import REPO, RESULTS, format_cell, machine_line

#: Every benchmark script, in the order BENCHMARKS.md shows them.
BENCHMARKS = [
    "label_efficiency",
    "strategies",
    "training",
    "widgets",
    "projection",
    "map_browser",
    "encoders",
    "grid",
    "team",
]
#: Run only with --with-label-efficiency or when named in --only: it takes about an hour.
OPT_IN = {"label_efficiency"}
OUTPUT = REPO / "BENCHMARKS.md"


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _names(arg: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    return names


# ---------------------------------------------------------------------------------------------
# Running


def run(name: str, *, quick: bool, python: str, timeout: float | None) -> dict[str, Any]:
    """Run one benchmark script in a fresh process; return what happened."""
    cmd = [python, str(REPO / "benchmarks" / f"{name}.py")] + (["--quick"] if quick else [])
    results = RESULTS / f"{name}.json"
    before = results.stat().st_mtime if results.exists() else None
    print(f"\n===== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        rc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, check=False).returncode
        why = None if rc == 0 else f"exit status {rc}"
    except subprocess.TimeoutExpired:
        rc, why = None, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    written = results.exists() and results.stat().st_mtime != before
    if why is None and not written:
        why = f"finished without writing {results.relative_to(REPO)}"
    print(f"===== {name}: {why or 'done'} in {seconds:.0f} s", flush=True)
    return {"name": name, "ok": why is None, "why": why, "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# Rendering


def load_results(results: Path = RESULTS) -> list[dict[str, Any]]:
    """Every results file, in BENCHMARKS order, then any other by name."""
    docs = []
    for path in sorted(results.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if not isinstance(doc, dict) or "name" not in doc or "tables" not in doc:
            continue  # not a results file of the harness
        docs.append(doc)
    return _ordered(docs)


def _ordered(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BENCHMARKS order; a variant ("label_efficiency_digits") follows its script's report."""

    def rank(name: str) -> int:
        for i, n in enumerate(BENCHMARKS):
            if name == n or name.startswith(n + "_"):
                return i
        return len(BENCHMARKS)

    return sorted(docs, key=lambda d: (rank(d["name"]), d["name"]))


def _cell(value: Any) -> str:
    text = format_cell(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(c) for c in columns) + " |"]
    out.append("|" + "|".join(" --- " for _ in columns) + "|")
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _met(met: Any) -> str:
    return "not judged" if met is None else ("met" if met else "**NOT met**")


def _when(doc: dict[str, Any]) -> str:
    started = str(doc.get("started", "?")).replace("T", " ").replace("+00:00", " UTC")
    return f"{started}, {float(doc.get('seconds') or 0):.0f} s"


def _commit(info: dict[str, Any]) -> str:
    commit = (info.get("commit") or "unknown")[:10]
    return commit + (" + uncommitted changes" if info.get("dirty") else "")


HARDWARE = ("cpu", "cores", "ram_gb", "gpu", "python", "torch", "numpy")


def render(docs: list[dict[str, Any]], failures: list[dict[str, Any]] | None = None) -> str:
    """BENCHMARKS.md from the results (deterministic: the same files give the same text)."""
    docs = _ordered(docs)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python benchmarks/run_all.py`: do not edit by hand. -->",
        "",
        "Generated by `python benchmarks/run_all.py` from `benchmarks/results/*.json` (written "
        "by each script through `benchmarks/_harness.py`): **do not edit by hand**. "
        "Re-render with `python benchmarks/run_all.py --render-only`.",
        "",
    ]
    quick = [d for d in docs if d.get("quick")]
    if quick:
        names = ", ".join(f"`{d['name']}`" for d in quick)
        lines += [
            "> [!WARNING]",
            f"> **QUICK RUN RESULTS: {names} come from `--quick` smoke runs (reduced sizes, "
            "few repeats). Their figures are indicative only and are NOT the project's "
            "benchmark results; run `python benchmarks/run_all.py` without `--quick`.**",
            "",
        ]
    if failures:
        lines += ["> [!CAUTION]", "> The last `run_all.py` run had failures:"]
        lines += [f"> - `{f['name']}`: {f['why']}" for f in failures]
        lines += [">", "> Their sections below (if any) show older results.", ""]
    missing = [n for n in BENCHMARKS if n not in {d["name"] for d in docs}]
    if missing:
        lines += ["No results yet for: " + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    if not docs:
        return "\n".join(lines).rstrip() + "\n"

    # The machine: the latest run's; benchmarks that ran elsewhere say so in their section.
    latest = max(docs, key=lambda d: str(d.get("started", "")))["machine"]
    lines += ["## Machine", ""]
    lines += _md_table(
        ["", ""],
        [
            ["CPU", f"{latest.get('cpu')}, {latest.get('cores')} cores"],
            ["RAM", f"{latest.get('ram_gb')} GB"],
            ["GPU", latest.get("gpu") if latest.get("cuda") else "none (no CUDA)"],
            ["Python", latest.get("python")],
            ["torch", f"{latest.get('torch')} ({latest.get('torch_threads')} threads)"],
            ["numpy", latest.get("numpy")],
            ["platform", latest.get("platform")],
        ],
    )
    lines += [""]

    lines += ["## Summary", ""]
    summary = []
    for d in docs:
        targets = d.get("targets") or []
        judged = [t for t in targets if t.get("met") is not None]
        met = sum(bool(t["met"]) for t in judged)
        missed = [t["name"] for t in judged if not t["met"]]
        parts = [f"{met}/{len(judged)} met"] if judged else []
        if len(judged) < len(targets):
            parts.append(f"{len(targets) - len(judged)} not judged")
        verdict = ", ".join(parts) or "-"
        if missed:
            verdict += " (NOT met: " + "; ".join(missed) + ")"
        summary.append(
            [
                f"[{d['title']}](#{d['name']})",
                "**QUICK**"
                if d.get("quick")
                else "**PARTIAL** (see notes)"
                if any(str(n).startswith("PARTIAL") for n in d.get("notes", []))
                else "full",
                verdict,
                _when(d),
                _commit(d.get("machine", {})),
            ]
        )
    lines += _md_table(["benchmark", "run", "targets", "ran (UTC), wall time", "commit"], summary)
    lines += [""]

    for d in docs:
        lines += _section(d, latest)
    return "\n".join(lines).rstrip() + "\n"


def _section(d: dict[str, Any], latest: dict[str, Any]) -> list[str]:
    info = d.get("machine", {})
    lines = [f'<a id="{d["name"]}"></a>', "", f"## {d['title']}", ""]
    if d.get("quick"):
        lines += ["> [!WARNING]", "> **QUICK RUN: smoke-test sizes, figures indicative only.**", ""]
    lines += [
        f"- command: `{d.get('command', '?')}`",
        f"- ran: {_when(d)}; commit {_commit(info)}",
    ]
    if any(info.get(k) != latest.get(k) for k in HARDWARE):
        lines.append(f"- machine: {machine_line(info)}")
    lines.append("")
    targets = d.get("targets") or []
    if targets:
        lines += ["**Targets**", ""]
        lines += _md_table(
            ["target", "value", "goal", "met"],
            [[t["name"], t.get("value"), t.get("target"), _met(t.get("met"))] for t in targets],
        )
        lines.append("")
    for t in d.get("tables") or []:
        lines += [f"**{t['caption']}**", ""]
        lines += _md_table(t["columns"], t["rows"])
        lines.append("")
    for f in d.get("figures") or []:
        path = (RESULTS / f["path"]).relative_to(REPO).as_posix()
        caption = f.get("caption", "")
        alt = caption.replace("[", "(").replace("]", ")").replace("\n", " ")
        lines += [f"![{alt}]({path})", "", f"*{caption}*" if caption else "", ""]
    notes = d.get("notes") or []
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return lines


def write(failures: list[dict[str, Any]] | None = None, output: Path = OUTPUT) -> Path:
    docs = load_results()
    output.write_text(render(docs, failures))
    quick = [d["name"] for d in docs if d.get("quick")]
    print(
        f"\nwrote {output} ({len(docs)} benchmark(s)"
        + (f"; QUICK runs: {', '.join(quick)}" if quick else "")
        + ")",
        flush=True,
    )
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", default="", help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument(
        "--with-label-efficiency",
        action="store_true",
        help="also run label_efficiency (about an hour); its JSON is rendered either way",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="only render BENCHMARKS.md from the JSONs"
    )
    parser.add_argument("--python", default=_python(), help="interpreter for the scripts")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="per-script time limit"
    )
    parser.add_argument("--output", default=str(OUTPUT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.render_only:
        write(output=output)
        return 0

    only, skip = _names(args.only, parser), _names(args.skip, parser)
    names = [n for n in BENCHMARKS if (n in only if only else True) and n not in skip]
    if not only and not args.with_label_efficiency:
        names = [n for n in names if n not in OPT_IN]
    if not names:
        parser.error("nothing to run")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"run_all {started}: {', '.join(names)}" + (" (--quick)" if args.quick else ""))
    done = [run(n, quick=args.quick, python=args.python, timeout=args.timeout) for n in names]
    failures = [r for r in done if not r["ok"]]
    print(
        "\n"
        + "\n".join(f"{r['name']:18s} {r['why'] or 'ok':24s} {r['seconds']:7.0f} s" for r in done)
    )
    write(failures, output)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
