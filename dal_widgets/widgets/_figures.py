"""Plotly figures shared by the widgets and the static HTML report."""

from __future__ import annotations

import html
from typing import Any

__all__ = [
    "NEUTRAL_TEXT",
    "PALETTE",
    "fit_to_container",
    "learning_curve_figure",
    "plotly_text",
    "plotly_theme_css",
    "report_html",
    "theme_layout",
    "timing_figure",
]

#: Category colors shared by the figures and the map (Tableau 10, then 10 more). Tableau's
#: tenth color, a light grey (#bab0ac), is moved back to 19th: beside the map's grey for
#: "unlabeled" the tenth class (digit 9) could not be told apart; cyan takes its place.
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
    "#17becf",
    "#1f77b4",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#bab0ac",
    "#393b79",
]

#: Text color of the plotly figures. plotly draws its own SVG with inline colors and cannot read
#: the page's CSS variables, so the figures use one mid grey that reads on a white page and on
#: JupyterLab's dark theme (#111) alike: about 4.3:1 contrast on both, the most a single grey
#: reaches on both. In JupyterLab :func:`plotly_theme_css` swaps in the theme's own text color.
NEUTRAL_TEXT = "#7a7a7a"
#: Grid and axis lines: a translucent grey, faint on white and on dark backgrounds.
NEUTRAL_GRID = "rgba(128,128,128,0.25)"
_CLEAR = "rgba(0,0,0,0)"


def theme_layout() -> dict[str, Any]:
    """Layout settings that make a plotly figure readable on light and dark notebook themes:
    transparent backgrounds (the page shows through), neutral text, grid and axis lines."""
    axis = {"gridcolor": NEUTRAL_GRID, "zerolinecolor": NEUTRAL_GRID, "linecolor": NEUTRAL_GRID}
    return {
        "paper_bgcolor": _CLEAR,
        "plot_bgcolor": _CLEAR,
        "font": {"color": NEUTRAL_TEXT},
        "xaxis": axis,
        "yaxis": dict(axis),
        "legend": {"bgcolor": _CLEAR},
        "modebar": {"bgcolor": _CLEAR, "color": NEUTRAL_TEXT, "activecolor": PALETTE[0]},
    }


def fit_to_container(figure: Any) -> Any:
    """Have a plotly FigureWidget take its container's width on every window "resize" event;
    returns the figure. Call it before the figure is displayed.

    plotly's FigureWidget (rendered through anywidget since plotly 6) adds its own "resize"
    listener only on a Lumino "before-attach" message, which anywidget never sends: the figure
    kept plotly's default 700 px width in every column, deaf to the resize events that
    :class:`~dal_widgets.widgets._resize.FitWidth` sends, and in a narrower column (Notebook 7:
    about 530 px) what sat at its right edge, the map's class legend, was cut off. plotly.js's
    ``responsive`` option adds the listener (its ``Plots.resize`` reads the container's width).
    """
    # FigureWidget has no public way to set plotly.js's config: its view passes this synced
    # trait to ``Plotly.newPlot``.
    figure._config = {**figure._config, "responsive": True}  # noqa: SLF001
    return figure


def plotly_text(text: Any) -> str:
    """Untrusted text for plotly, which renders a subset of HTML: ``&``, ``<`` and ``>``
    escaped. Quotes stay as they are: plotly decodes only a few named entities (``&quot;``
    would show literally) and, with ``<`` escaped, no tag can open."""
    return html.escape(str(text), quote=False)


def plotly_theme_css(scope: str) -> str:
    """A ``<style>`` element that gives the text of the plotly figures under ``scope`` (a CSS
    selector) JupyterLab's theme color.

    plotly writes each text's color inline; a stylesheet overrides that only with
    ``!important``. Legends, color bars and titles sit in plotly's ``infolayer``, tick labels
    in the axis layers; hover labels are left alone (plotly picks their text to contrast with
    the hovered trace's color).
    """
    color = f"var(--jp-ui-font-color1, var(--vscode-editor-foreground, {NEUTRAL_TEXT}))"
    targets = ", ".join(
        f"{scope} {part}" for part in (".infolayer text", ".xtick text", ".ytick text")
    )
    return f"<style>{targets} {{ fill: {color} !important; }}</style>"


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
    )
    fig.update_layout(theme_layout())
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
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
    fig.update_layout(theme_layout())
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
        "<style>:root{color-scheme:light dark}"
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}th{text-align:left;padding-right:1em}"
        # The figures have transparent backgrounds and neutral text: they follow the page.
        "@media (prefers-color-scheme:dark){body{background:#111;color:#ddd}pre{background:#222}}"
        "</style>"
        f"</head><body><h1>{html.escape(title)}</h1><table>{rows}</table>"
        f"{''.join(parts)}<h2>Learning-curve table</h2><pre>{html.escape(result.table())}</pre></body></html>"
    )
