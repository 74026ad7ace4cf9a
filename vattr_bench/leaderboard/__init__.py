"""The Gradio leaderboard: every `results.json` that `vattr-bench evaluate` (or `submit`) wrote, ranked per
protocol, with a live demo that streams the amortized attribution of each reasoning step over an image, a
Submit tab and an About tab.

    vattr-bench leaderboard --results runs leaderboard/results

The table logic (table.py, plot.py), the demo's generator (demo.py) and the About text (about.py) are plain
functions, tested without a browser; app.py's `build_app` wires them to components. Gradio is imported only
by `build_app`.
"""
from .demo import DemoSession, DemoUpdate, read_input
from .plot import method_style, tradeoff_plot
from .table import (DEFAULT_PROTOCOL, load_results, protocol_label, protocol_of, protocols, ranked_table,
                    results_digest, settings_summary)


def build_app(*args, **kwargs):
    """See `app.build_app` (imported here on first use: gradio is an optional dependency)."""
    from .app import build_app as build

    return build(*args, **kwargs)


__all__ = ["DEFAULT_PROTOCOL", "DemoSession", "DemoUpdate", "build_app", "load_results", "method_style",
           "protocol_label", "protocol_of", "protocols", "ranked_table", "read_input", "results_digest",
           "settings_summary", "tradeoff_plot"]
