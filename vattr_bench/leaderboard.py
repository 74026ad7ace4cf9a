"""The Gradio leaderboard: every `results.json` that `vattr-bench evaluate` wrote, one table per metric,
and a live demo that streams the amortized attribution of each span over the user's image.

    vattr-bench leaderboard --results runs leaderboard/results

The table logic (`load_results`, `leaderboard_table`, `leaderboard_plot`) and the demo's generator
(`DemoSession.stream`) are plain functions, so they are tested without a browser; `build_app` only wires
them to components.
"""
from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import HIGHER_IS_BETTER

TABLE_METRICS = ("r2", "lds", "pearson", "deletion_auc", "insertion_auc", "topk_drop", "pointing_game",
                 "sec_per_token")


def load_results(paths) -> tuple[pd.DataFrame, list[str]]:
    """Long table (one row per run × benchmark × method) from every results.json under ``paths``
    (files or folders, searched recursively), and one message per file that could not be read —
    a malformed file is reported, never fatal to the others."""
    rows, problems = [], []
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    for f in files:
        try:
            payload = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or "results" not in payload:
                continue  # some other JSON (an estimator, a perf report): not a results file
            config = payload.get("config", {})
            run = config.get("output_dir") or f.parent.name
            settings = config.get("method_settings") or {}
            for benchmark, methods in payload["results"].items():
                for method, metrics in methods.items():
                    rows.append({"run": str(run), "model": payload.get("model", "?"), "benchmark": benchmark,
                                 "method": method, "settings": settings_summary(settings.get(method)),
                                 "n_samples": metrics.get("n_samples"), **{m: metrics.get(m) for m in TABLE_METRICS},
                                 "ci95": metrics.get("ci95") or {}})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as e:
            problems.append(f"{f}: not a readable results.json ({type(e).__name__}: {e})")
    columns = ["run", "model", "benchmark", "method", "settings", "n_samples", *TABLE_METRICS, "ci95"]
    return pd.DataFrame(rows, columns=columns), problems


def settings_summary(settings, limit: int = 160) -> str:
    """One line of what a method says decides its scores (results.json's ``config.method_settings``), so
    that two rows of one method (say amortized with two estimators) say how they differ: scalar entries as
    key=value (a list of them comma-joined), a path by its file name, a list of tables item by item (";");
    nested tables (held-out scores) left out."""
    scalar = (str, int, float, bool)

    def flat(table: dict) -> list[str]:
        out = []
        for k, v in table.items():
            if isinstance(v, scalar):
                out.append(f"{k}={Path(v).name if k == 'path' and isinstance(v, str) else v}")
            elif isinstance(v, list) and all(isinstance(x, scalar) for x in v):
                out.append(f"{k}={','.join(map(str, v))}")
            elif isinstance(v, list):
                out.append("; ".join(" ".join(flat(x)) for x in v if isinstance(x, dict)))
        return out
    text = " ".join(flat(settings)) if isinstance(settings, dict) else ""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _check_metric(metric: str) -> None:
    if metric not in TABLE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(TABLE_METRICS)}")


def leaderboard_table(frame: pd.DataFrame, metric: str = "r2", intervals: bool = False) -> pd.DataFrame:
    """Wide table for one metric: a row per (model, method, run) with the method's settings, a column per
    benchmark and their mean, best first (direction from the metric's higher_is_better). ``intervals``: each
    benchmark's cell as text with the run's 95% interval, "0.531 [0.488, 0.573]" (runs made before
    results.json had intervals show the value alone)."""
    _check_metric(metric)
    if frame.empty:
        return pd.DataFrame(columns=["model", "method", "run", "settings", "mean"])
    index = ["model", "method", "run", "settings"]
    frame = frame.fillna({"settings": ""})
    wide = frame.pivot_table(index=index, columns="benchmark", values=metric, aggfunc="mean")
    wide["mean"] = wide.mean(axis=1)
    wide = wide.sort_values("mean", ascending=not HIGHER_IS_BETTER.get(metric, True)).reset_index().round(4)
    if intervals:
        ci = {(*(row[c] for c in index), row["benchmark"]): (row["ci95"] or {}).get(metric) for _, row in frame.iterrows()}
        for bench in [c for c in wide.columns if c not in (*index, "mean")]:
            wide[bench] = [_with_interval(row[bench], ci.get((*(row[c] for c in index), bench)))
                           for _, row in wide.iterrows()]
    return wide


def _with_interval(value, interval) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def leaderboard_plot(frame: pd.DataFrame, metric: str = "r2"):
    """The table's metric against seconds per token, a panel per benchmark (`tradeoff_figure`); a method
    in several runs is labelled with its run too. For ``sec_per_token`` itself, r2 against it."""
    from .heatmaps import tradeoff_figure

    metric = "r2" if metric == "sec_per_token" else metric
    _check_metric(metric)
    runs_per_method = frame.groupby("method")["run"].nunique()
    labels = [f"{m} ({r})" if runs_per_method[m] > 1 else m for m, r in zip(frame["method"], frame["run"])]
    return tradeoff_figure(frame.assign(label=labels), metric, not HIGHER_IS_BETTER.get(metric, True))


class DemoSession:
    """The live demo: load the model and its estimator once, then stream any image + prompt."""

    def __init__(self, model_name: str = "vattr-tiny", regions: str = "feature-ward", k: int = 16, device: str = "cpu"):
        self.model_name, self.regions, self.k, self.device = model_name, regions, k, device
        self._model = self._estimator = None

    def _load(self):
        if self._model is None:
            from .methods.amortized import Amortized
            from .models import load_model

            self._model = load_model(self.model_name, device=self.device)
            self._estimator = Amortized().load_for(self._model, self.regions, "knockout")
        return self._model, self._estimator

    def stream(self, image, prompt: str, max_new_tokens: int = 256):
        """Yield (markdown log so far, heatmap of the newest span) as each span's event arrives.
        Bad input raises ValueError naming the problem."""
        from .heatmaps import overlay
        from .regions import make_regions
        from .streaming import stream_attributions

        if image is None:
            raise ValueError("no image: upload one")
        model, estimator = self._load()
        prepared = model.prepare(image, prompt or "")  # checks the image and the prompt
        regions, note = make_regions(self.regions, model, prepared, k=self.k)
        events: queue.Queue = queue.Queue()

        def produce():
            try:
                stream_attributions(model, prepared, regions, estimator, max_new_tokens, on_event=events.put)
            except Exception as e:  # shown after the spans that did arrive
                events.put(e)
            finally:
                events.put(None)

        threading.Thread(target=produce, daemon=True).start()
        log = [f"_{regions.k} {regions.protocol} regions{'; ' + note if note else ''}_"]
        while (event := events.get()) is not None:
            if isinstance(event, Exception):
                raise ValueError(f"generation stopped: {event}") from event
            top = np.argsort(-event.scores)[:3]
            label = "answer" if event.is_answer else f"step {event.index + 1}"
            log.append(f"**{label}** ({event.emitted_s:.2f}s): {event.text}  \n"
                       f"top regions {', '.join(f'{k} ({event.scores[k]:+.2f})' for k in top)}")
            yield "\n\n".join(log), overlay(prepared.image, regions, event.scores)


def build_app(result_paths, model_name: str = "vattr-tiny", device: str = "cpu"):
    import gradio as gr

    frame, problems = load_results(result_paths)
    session = DemoSession(model_name, device=device)

    def table(metric, intervals):
        return leaderboard_table(frame, metric, intervals), leaderboard_plot(frame, metric)

    def demo(image, prompt):
        try:
            yield from session.stream(image, prompt)
        except (ValueError, FileNotFoundError) as e:
            raise gr.Error(str(e))

    with gr.Blocks(title="vattr-bench leaderboard") as app:
        gr.Markdown("# vattr-bench\nHow faithfully does each attribution method say which image regions a "
                    "thinking model's reasoning steps rely on — scored against exhaustive ablation.")
        with gr.Tab("Leaderboard"):
            with gr.Row():
                metric = gr.Dropdown(list(TABLE_METRICS), value="r2", label="metric")
                intervals = gr.Checkbox(value=False, label="95% intervals (samples resampled)")
            first_table, first_plot = table("r2", False)
            board = gr.Dataframe(value=first_table, interactive=False)
            tradeoff = gr.Plot(value=first_plot, label="the metric against seconds of attribution per token")
            for control in (metric, intervals):
                control.change(table, inputs=[metric, intervals], outputs=[board, tradeoff])
            runs = ", ".join(sorted(frame["run"].unique())) or "none"
            gr.Markdown(f"Runs: {runs}." + ("\n\nNot loaded:\n" + "\n".join(f"- {p}" for p in problems) if problems else ""))
        with gr.Tab("Live streaming demo"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="pil", label="image")
                    prompt = gr.Textbox(label="prompt", value="what is the sum of the bars ?")
                    go = gr.Button("think and attribute")
                with gr.Column():
                    heat = gr.Image(type="pil", label="newest span's regions (amortized)")
                    log = gr.Markdown()
            go.click(demo, inputs=[image, prompt], outputs=[log, heat])
    return app
