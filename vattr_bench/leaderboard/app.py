"""`build_app`: the Gradio app — Leaderboard, Live demo, Submit and About tabs — wired to the plain functions
of table.py, plot.py, demo.py and ../submission.py."""

import tempfile
import threading
from pathlib import Path

import pandas as pd

from ..metrics.registry import METRICS, RANKING_METRIC
from .about import about_markdown
from .demo import MAX_NEW_TOKENS, DemoSession, read_input
from .plot import tradeoff_image
from .table import display_columns, filter_rows, load_results, protocols, ranked_table, run_details

DEFAULT_RESULT_PATHS = ("leaderboard/results", "runs")
SUBMITTED_FOLDER = "submitted"  # under the first results folder: one subfolder per submission, named by digest
DEMO_CONCURRENCY = 8  # demo streams served at once; more wait in the queue (each one is a generation thread)
REFERENCE_STYLE = "background-color: #eeeeee; color: #666666; font-style: italic"


class Board:
    """The results the app shows, read again on demand (the refresh button, a tab shown) so a new file or an
    accepted submission appears without restarting the app."""

    def __init__(self, paths, optional=()):
        self.paths, self.optional = list(paths), list(optional)
        self.lock = threading.Lock()
        self.reload()

    def reload(self):
        frame, problems = load_results(self.paths, self.optional)
        with self.lock:
            self.frame, self.problems = frame, problems
        return frame


def styled(table: pd.DataFrame):
    """The table as shown: helper columns dropped, reference rows greyed (a pandas Styler Gradio renders)."""
    shown = table[display_columns(table)]
    grey = table["reference"].tolist() if "reference" in table else [False] * len(table)
    numbers = {c: "{:.3f}" for c in shown.columns if shown[c].dtype.kind == "f"} | {"ms/token": "{:.3g}"}
    return (shown.style.apply(lambda row: [REFERENCE_STYLE if grey[row.name] else ""] * len(row), axis=1)
            .format({c: f for c, f in numbers.items() if c in shown.columns}, na_rep=""))


def board_caption(frame: pd.DataFrame, table: pd.DataFrame, protocol: str, metric: str) -> str:
    ranked = int((~table["reference"]).sum()) if len(table) else 0
    refs = len(table) - ranked
    metric_text = f"**{metric}** ({'higher' if METRICS[metric].higher_is_better else 'lower'} is better)"
    text = (f"{ranked} ranked rows and {refs} reference rows (grey, `ref`: the ablation truth and null baselines, "
            f"never ranked) under **{protocol or 'no protocol'}**; cells are {metric_text}, the mean is over the "
            "benchmarks shown (blank, and ranked last, for a row that lacks one). Costs in ms per token. Click a row "
            "for its settings and intervals.")
    if len(table) and table["stand_in"].any():
        text += " † schema-1 run: no r2_signed recorded, its r2 is shown and ranked instead."
    return text


def example_images(folder: Path) -> list[tuple[str, str, str]]:
    """(path, caption, prompt) of one synthetic test sample per family, written once as PNG files."""
    from ..benchmarks import FAMILIES, synthetic_sample

    out = []
    for family in FAMILIES:
        sample = synthetic_sample(family, 0)
        path = folder / f"{family}.png"
        if not path.is_file():
            sample.image.save(path)
        out.append((str(path), family, sample.prompt))
    return out


def build_app(result_paths=None, model_name: str = "vattr-tiny", device: str = "cpu", submit_dir=None,
              demo_concurrency: int = DEMO_CONCURRENCY):
    """The app over the results.json files under ``result_paths`` (None: the default folders, each silently
    empty when missing). Submissions are stored under ``submit_dir`` (default: the first results folder's
    "submitted" subfolder), which is always scanned."""
    import gradio as gr

    from ..submission import MAX_RESULTS_BYTES, MAX_SAMPLES_BYTES, existing_digests, store_submission, validate_submission

    optional = DEFAULT_RESULT_PATHS if result_paths is None else ()
    paths = list(DEFAULT_RESULT_PATHS if result_paths is None else result_paths)
    first_folder = next((Path(p) for p in paths if not str(p).endswith(".json")), Path(DEFAULT_RESULT_PATHS[0]))
    submit_dir = Path(submit_dir) if submit_dir is not None else first_folder / SUBMITTED_FOLDER
    if not any(submit_dir.resolve().is_relative_to(Path(p).resolve()) for p in paths):
        paths.append(submit_dir)
        optional = (*optional, submit_dir)
    board = Board(paths, optional)
    session = DemoSession(model_name, device=device)
    examples = example_images(Path(tempfile.mkdtemp(prefix="vattr-examples-")))
    stops: dict[str, threading.Event] = {}

    def choices(frame):
        all_protocols = protocols(frame)
        return (all_protocols, sorted(frame["model"].unique()), sorted(frame["benchmark"].unique()))

    def view_values(protocol, metric, models, benchmarks, search, sort_by, intervals):
        frame = board.frame
        table = ranked_table(frame, protocol or None, metric, models, benchmarks, search, sort_by or None, intervals)
        rows = filter_rows(frame, protocol or (protocols(frame)[0] if len(frame) else None), models, benchmarks, search)
        problems = ("\n\nNot loaded:\n" + "\n".join(f"- {p}" for p in board.problems)) if board.problems else ""
        return (styled(table), board_caption(frame, table, protocol, metric) + problems, tradeoff_image(rows, metric),
                ["mean", *[c for c in display_columns(table) if c != "rank"]])

    def view(*filters):
        table, caption, image, sortable = view_values(*filters)
        return table, caption, image, gr.Dropdown(choices=sortable)

    def refresh(protocol, metric, models, benchmarks, search, sort_by, intervals):
        frame = board.reload()
        all_protocols, all_models, all_benchmarks = choices(frame)
        protocol = protocol if protocol in all_protocols else (all_protocols[0] if all_protocols else None)
        return (gr.Dropdown(choices=all_protocols, value=protocol), gr.Dropdown(choices=all_models),
                gr.CheckboxGroup(choices=all_benchmarks),
                *view(protocol, metric, models, benchmarks, search, sort_by, intervals))

    def details(evt: gr.SelectData):
        row = evt.row_value or []
        if len(row) < 3:
            return ""
        return run_details(board.frame, model=row[2], method=row[1], run=row[-1])

    def submit(results_file, samples_file):
        if not results_file:
            return "Choose a results.json to submit."
        files = [(results_file, MAX_RESULTS_BYTES), (samples_file, MAX_SAMPLES_BYTES)]
        data = []
        for path, limit in files:
            if path is None:
                data.append(None)
                continue
            with open(path, "rb") as f:  # never more than the limit + 1 byte: enough to refuse a huge file
                data.append(f.read(limit + 1))
        board.reload()
        checked = validate_submission(data[0], data[1], existing_digests(board.frame), Path(results_file).name,
                                      Path(samples_file).name if samples_file else "samples.jsonl")
        if not checked.ok:
            return "**Not accepted.** Problems found:\n" + "\n".join(f"- {p}" for p in checked.problems)
        try:
            folder = store_submission(checked, data[0], data[1], submit_dir)
        except ValueError as e:
            return f"**Not stored:** {e}"
        board.reload()
        return (f"**Received**, status *pending review* (content digest `{checked.digest}`): it is in the "
                f"Leaderboard tab now, marked as pending, under its protocol. Stored in `{folder.name}`.")

    def preview(path):
        if not path:
            return None, ""
        try:
            image, _, notes = read_input(path, "a prompt")  # the image alone is checked here
        except ValueError as e:
            return None, f"⚠ {e}"
        return image, "; ".join(notes)

    def pick_example(evt: gr.SelectData):
        path, _, prompt = examples[evt.index]
        return path, prompt, ""

    def demo(path, prompt, with_truth, request: gr.Request):
        stop = stops[request.session_hash] = threading.Event()
        try:
            for update in session.stream(path, prompt, MAX_NEW_TOKENS, with_truth, stop):
                steps = [{"step": s.label, "text": s.text, "top regions (score)": s.top_text()} for s in update.steps]
                newest = update.steps[-1] if update.steps else None
                notes = " · ".join([update.status, *update.notes])
                yield (notes, update.text, pd.DataFrame(steps, columns=["step", "text", "top regions (score)"]),
                       newest.heatmap if newest else None, newest.truth_heatmap if newest else None,
                       [(s.heatmap, s.label) for s in update.steps], [(s.heatmap, s.truth_heatmap) for s in update.steps])
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        finally:
            stops.pop(request.session_hash, None)

    def stop_demo(request: gr.Request):
        if request.session_hash in stops:
            stops[request.session_hash].set()

    def show_step(maps, evt: gr.SelectData):
        if not maps or evt.index >= len(maps):
            return None, None
        return maps[evt.index]

    frame = board.frame
    all_protocols, all_models, all_benchmarks = choices(frame)
    first = view_values(all_protocols[0] if all_protocols else None, RANKING_METRIC, [], [], "", "mean", False)
    first_sortable = first[3]
    with gr.Blocks(title="vattr-bench leaderboard") as app:
        gr.Markdown("## vattr-bench: which image regions does each reasoning step rely on? Attribution methods "
                    "scored against exhaustive ablation, and their cost")
        with gr.Tab("Leaderboard") as board_tab:
            with gr.Row(equal_height=True):
                protocol = gr.Dropdown(all_protocols, value=all_protocols[0] if all_protocols else None,
                                       label="protocol (runs are ranked only against the same protocol)", scale=3)
                metric = gr.Dropdown(list(METRICS), value=RANKING_METRIC, label="metric", scale=1)
                sort_by = gr.Dropdown(first_sortable, value="mean", label="sort by", scale=1)
                search = gr.Textbox(label="search methods, runs, settings", scale=2)
                refresh_button = gr.Button("↻ refresh", scale=0, min_width=90)
            with gr.Accordion("filters: models, benchmarks, intervals", open=False):
                with gr.Row():
                    models = gr.Dropdown(all_models, multiselect=True, label="models (none: all)", scale=2)
                    benchmarks = gr.CheckboxGroup(all_benchmarks, label="benchmarks (none: all)", scale=3)
                    intervals = gr.Checkbox(value=False, label="95% intervals", scale=1)
            table = gr.Dataframe(first[0], interactive=False, pinned_columns=2, max_chars=36, wrap=False, elem_id="board",
                                 max_height=480, show_search="none", show_label=False)
            caption = gr.Markdown(first[1])
            run_info = gr.Markdown()
            plot = gr.Image(first[2], label="faithfulness against cost (the rows above)", format="png",
                            interactive=False)
        with gr.Tab("Live demo"):
            maps = gr.State([])
            with gr.Row():
                with gr.Column(scale=2):
                    gallery = gr.Gallery([(p, c) for p, c, _ in examples], label="examples: one synthetic sample per "
                                         "family (click one)", columns=5, height=130, allow_preview=False)
                    upload = gr.File(label="or upload an image", type="filepath")
                    # the stream's input: set from an example or a readable upload (an API client sends a file)
                    shown_input = gr.Image(examples[0][0], label="input", type="filepath", format="png",
                                           interactive=False, height=220)
                    input_note = gr.Markdown()
                    prompt = gr.Textbox(label="prompt", value=examples[0][2], max_lines=3)
                    with_truth = gr.Checkbox(label="also compute the exhaustive-ablation truth for each step "
                                             "(K extra passes, after the trace)", value=False)
                    with gr.Row():
                        go = gr.Button("think and attribute", variant="primary")
                        stop_button = gr.Button("stop", variant="stop")
                with gr.Column(scale=3):
                    status = gr.Markdown()
                    trace = gr.Textbox(label="the model's trace, as it is written", lines=4, max_lines=8)
                    steps = gr.Dataframe(headers=["step", "text", "top regions (score)"], interactive=False,
                                         label="closed steps", max_height=220, wrap=True)
                    with gr.Row():
                        heat = gr.Image(label="step map: amortized attribution (top 3 regions boxed)", height=300)
                        truth = gr.Image(label="ablation truth for the same step", height=300)
                    strip = gr.Gallery(label="all steps so far (click one to show it above)", columns=8, height=110,
                                       elem_id="strip",
                                       allow_preview=False)
        with gr.Tab("Submit"):
            gr.Markdown("Upload the `results.json` of a `vattr-bench evaluate` or `vattr-bench submit` run, and its "
                        "`samples.jsonl` to have the aggregates checked against the per-sample records. Files are "
                        f"read as data only (nothing is run); at most {MAX_RESULTS_BYTES // 2**20} MB and "
                        f"{MAX_SAMPLES_BYTES // 2**20} MB; archives are refused.")
            with gr.Row():
                results_upload = gr.File(label="results.json", type="filepath", elem_id="results-upload")
                samples_upload = gr.File(label="samples.jsonl (optional)", type="filepath")
            submit_button = gr.Button("validate and submit", variant="primary")
            verdict = gr.Markdown(elem_id="verdict")
        with gr.Tab("About"):
            gr.Markdown(about_markdown())

        filters = [protocol, metric, models, benchmarks, search, sort_by, intervals]
        view_outputs = [table, caption, plot, sort_by]
        for control in filters:
            control.change(view, inputs=filters, outputs=view_outputs)
        refresh_outputs = [protocol, models, benchmarks, *view_outputs]
        refresh_button.click(refresh, inputs=filters, outputs=refresh_outputs)
        board_tab.select(refresh, inputs=filters, outputs=refresh_outputs)
        app.load(refresh, inputs=filters, outputs=refresh_outputs)
        table.select(details, outputs=run_info)
        submit_button.click(submit, inputs=[results_upload, samples_upload], outputs=verdict)

        upload.upload(preview, inputs=upload, outputs=[shown_input, input_note])
        gallery.select(pick_example, outputs=[shown_input, prompt, input_note])
        run = go.click(demo, inputs=[shown_input, prompt, with_truth], outputs=[status, trace, steps, heat, truth, strip, maps],
                       concurrency_limit=demo_concurrency, concurrency_id="demo")
        stop_button.click(stop_demo, cancels=[run])
        strip.select(show_step, inputs=maps, outputs=[heat, truth])
    app.queue(default_concurrency_limit=4)
    return app
