"""The leaderboard's faithfulness-against-cost plot, drawn from the same filtered rows as the table."""
from __future__ import annotations

import hashlib
import io
import threading

import numpy as np
import pandas as pd

from ..metrics.registry import HIGHER_IS_BETTER, RANKING_METRIC
from .table import check_metric, metric_values

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a method, from its name alone, so a method keeps its look whatever rows are shown
    or in what order: the built-in methods take distinct styles in name order, any other name one chosen by
    a hash of the name among the styles they leave."""
    from ..methods import BUILTIN

    builtin = sorted(BUILTIN)
    n_styles = len(_PALETTE) * len(_MARKERS)
    if method in builtin:
        index = builtin.index(method)
    else:
        digest = int(hashlib.sha256(method.encode()).hexdigest(), 16)
        index = len(builtin) + digest % (n_styles - len(builtin))
    # colour runs fastest, so neighbouring names differ in colour first
    return _PALETTE[index % len(_PALETTE)], _MARKERS[(index // len(_PALETTE)) % len(_MARKERS)]


def tradeoff_plot(rows: pd.DataFrame, metric: str = RANKING_METRIC):
    """``metric`` (y) against milliseconds of attribution per token (x, log) for the given long-table rows
    (already filtered like the table), a panel per benchmark; each method one colour and marker
    (`method_style`), hollow when it is a reference row. A matplotlib Figure made without pyplot, so the
    long-running server keeps none."""
    from matplotlib.figure import Figure

    check_metric(metric)
    values, stand_in = metric_values(rows, metric)
    rows = rows.assign(value=values, ms=rows["sec_per_token"].astype("float64") * 1000.0)
    rows = rows.dropna(subset=["value", "ms"])
    rows = rows[rows["ms"] > 0]
    benchmarks = sorted(rows["benchmark"].unique()) or ["(no results with a cost)"]
    fig = Figure(figsize=(min(2.6 * len(benchmarks), 13) + 2.1, 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(benchmarks), sharey=True))
    handles = {}
    for ax, bench in zip(axes, benchmarks):
        for row in rows[rows["benchmark"] == bench].itertuples():
            colour, marker = method_style(row.method)
            label = row.method + (" (ref)" if row.reference else "")
            handles[label] = ax.scatter(row.ms, row.value, s=36, marker=marker, zorder=3, label=label,
                                        facecolors="none" if row.reference else colour, edgecolors=colour)
        ax.set_xscale("log")
        ax.set_title(bench, fontsize=9)
        ax.set_xlabel("ms per token (log)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    shown = metric + (" (r2 for schema-1 runs)" if stand_in.any() else "")
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    axes[0].set_ylabel(f"{shown}\n({direction} is better)", fontsize=8)
    names = sorted(handles)
    fig.legend([handles[n] for n in names], names, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    return fig


_RENDER_LOCK = threading.Lock()  # matplotlib's text rendering (FreeType, mathtext) is not thread-safe


def tradeoff_image(rows: pd.DataFrame, metric: str = RANKING_METRIC, dpi: int = 90):
    """`tradeoff_plot` rendered to a PIL image, one render at a time: the server answers several visitors'
    requests in parallel threads, and two figures drawn at once corrupt each other's glyphs."""
    from PIL import Image

    with _RENDER_LOCK:
        fig = tradeoff_plot(rows, metric)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
