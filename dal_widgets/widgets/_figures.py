"""Plotly figures shared by the widgets and the static HTML report."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["PALETTE", "learning_curve_figure", "report_html", "timing_figure"]

#: Category colors shared by the figures and the map (Tableau 10, then 10 more).
PALETTE = [
    "#4c78a8",
    "#f58518",
    "#54a24b",
    "#e45756",
    "#72b7b2",
    "#eeca3b",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#bab0ac",
    "#1f77b4",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
]


def learning_curve_figure(result: Any, title: str = "Learning curves") -> Any:
    """Accuracy against labels, one line per strategy with its interquartile band."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, name in enumerate(result.strategies):
        c = result.curve(name)
        color = PALETTE[i % len(PALETTE)]
        x = c["labels"].tolist()
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=c["q75"].tolist() + c["q25"].tolist()[::-1],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                name=f"{name} IQR",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=c["mean"].tolist(),
                mode="lines+markers",
                line={"color": color},
                name=f"{name} (AUBC {result.aubc(name):.3f})",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="labels",
        yaxis_title="held-out accuracy",
        template="plotly_white",
        hovermode="x unified",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def timing_figure(result: Any) -> Any:
    """Mean seconds per round, split into training, inference and selection."""
    import plotly.graph_objects as go

    names = result.strategies
    parts = {"train_s": "training", "infer_s": "inference", "select_s": "selection"}
    fig = go.Figure()
    for key, label in parts.items():
        fig.add_trace(go.Bar(x=names, y=[result.seconds(n)[key] for n in names], name=label))
    fig.update_layout(
        barmode="stack", title="Seconds per round", yaxis_title="seconds", template="plotly_white"
    )
    return fig


def report_html(result: Any, *, title: str, summary: dict[str, Any]) -> str:
    """A self-contained HTML page (plotly.js inlined: it opens offline) with the curves and table."""
    import plotly.io as pio

    figs = [learning_curve_figure(result), timing_figure(result)]
    parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}th{text-align:left;padding-right:1em}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><table>{rows}</table>"
        f"{''.join(parts)}<h2>Learning-curve table</h2><pre>{html.escape(result.table())}</pre></body></html>"
    )
