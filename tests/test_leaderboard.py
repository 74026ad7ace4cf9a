import json
import threading
from pathlib import Path

import numpy as np
import pytest

from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.leaderboard import (DEFAULT_PROTOCOL, DemoSession, build_app, load_results, method_style,
                                     protocols, ranked_table, read_input, tradeoff_plot)
from vattr_bench.leaderboard.table import run_details
from vattr_bench.metrics.registry import METRICS

SHIPPED = Path(__file__).parents[1] / "leaderboard" / "results"
# a results.json as schema 1 wrote it (the shipped run before schema 2; its output_dir renamed to tell it apart)
SCHEMA1 = Path(__file__).parent / "data" / "results-schema1.json"


def _write(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def _schema2(method="mine", r2_signed=0.4, r2=0.5, k=16, model="vattr-tiny", reference=False, flags=(), n_failed=0):
    entry = {m: 0.3 for m in METRICS} | {"r2_signed": r2_signed, "r2": r2, "sec_per_token": 0.002, "n_samples": 3,
                                         "n_spans": 12, "reference": reference, "reads_ground_truth": False,
                                         "n_failed": n_failed, "flags": list(flags), "ci95": {}}
    return {"schema_version": 2, "model": model, "ranking_metric": "r2_signed",
            "config": {"regions": "feature-ward", "k": k, "ablation": "knockout", "split": "test",
                       "source": "synthetic", "n_subsets": 32, "output_dir": f"runs/{method}-k{k}"},
            "results": {b: {method: entry} for b in ("math", "science", "document", "code", "general")}}


def test_load_reads_both_schemas_reports_bad_files_and_skips_missing_default_folders(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "estimator.json").write_text(json.dumps({"format": "vattr-bench/linear-estimator"}))
    _write(tmp_path / "text" / "results.json", {"model": "m", "results": {"math": {"x": {"r2": "abc"}}}})
    _write(tmp_path / "new" / "results.json", _schema2())
    frame, problems = load_results([SHIPPED, SCHEMA1, tmp_path, tmp_path / "named-missing", tmp_path / "runs"],
                                   optional=[tmp_path / "runs"])
    assert {"amortized", "integrated_gradients", "random", "mine"} <= set(frame["method"])
    assert len(problems) == 3, problems
    assert any("broken.json" in p for p in problems) and any("'abc', not a number" in p for p in problems)
    assert any("named-missing: no such file" in p for p in problems) and not any("runs:" in p for p in problems)
    # schema 1: ablation and random are the references; schema 2: its own flag
    old = frame[frame["run"] == "runs/eval50-schema1"]
    assert set(old[old["reference"]]["method"]) == {"ablation", "random"}
    new = frame[frame["run"] == "runs/eval50"]
    assert set(new[new["reference"]]["method"]) == {"ablation", "random", "uniform", "region_area"}
    assert load_results([tmp_path / "nothing"], optional=[tmp_path / "nothing"]) [1] == []


def test_the_table_ranks_one_protocol_with_references_set_apart(tmp_path):
    _write(tmp_path / "a" / "results.json", _schema2("mine", r2_signed=0.95, flags=["undefined on 78% of spans"],
                                                     n_failed=2))
    _write(tmp_path / "b" / "results.json", _schema2("other_k", r2_signed=0.99, k=32))
    frame, _ = load_results([SHIPPED, SCHEMA1, tmp_path])
    assert protocols(frame)[0] == DEFAULT_PROTOCOL and len(protocols(frame)) == 2
    table = ranked_table(frame)
    assert set(table["protocol"]) == {DEFAULT_PROTOCOL} and "other_k" not in set(table["method"])
    ranked = table[~table["reference"]]
    assert list(ranked["rank"].str.rstrip("†")) == [str(i) for i in range(1, len(ranked) + 1)]
    assert list(ranked["mean"]) == sorted(ranked["mean"], reverse=True)
    references = table[table["reference"]]
    assert set(references["method"]) == {"ablation", "random", "uniform", "region_area"}
    assert set(table["rank"][-len(references):]) == {"ref"} and "ref" not in set(ranked["rank"])
    # schema-1 rows are ranked by r2 (marked †), the schema-2 row by its r2_signed
    mine = table[table["method"] == "mine"].iloc[0]
    assert mine["rank"] == "1" and mine["mean"] == 0.95 and mine["n_failed"] == 10  # 2 on each of 5 benchmarks
    assert "undefined on 78%" in mine["flags"] and mine["ms/token"] == 2.0
    shipped = json.loads(SCHEMA1.read_text())["results"]
    amortized = table[(table["method"] == "amortized") & (table["run"] == "runs/eval50-schema1")].iloc[0]
    assert amortized["rank"].endswith("†") and amortized["code"] == round(shipped["code"]["amortized"]["r2"], 3)
    new = json.loads((SHIPPED / "vattr-tiny-synthetic-test50.json").read_text())["results"]
    current = table[(table["method"] == "amortized") & (table["run"] == "runs/eval50")].iloc[0]
    assert not current["rank"].endswith("†") and current["code"] == round(new["code"]["amortized"]["r2_signed"], 3)
    assert amortized["ms/token"] == float(f"{np.mean([shipped[b]['amortized']['sec_per_token'] for b in shipped]) * 1000:.3g}")
    assert amortized["n_samples"] == 50
    # the other protocol is its own table
    other = ranked_table(frame, protocols(frame)[1])
    assert list(other["method"]) == ["other_k"] and other.iloc[0]["rank"] == "1"
    # filters and search
    only = ranked_table(frame, benchmarks=["code"], search="AMORT")
    assert set(only["method"]) == {"amortized"} and "math" not in only.columns
    assert ranked_table(frame, models=["no-such-model"]).empty
    # sort by any column, the better value first; references stay after the ranked rows
    by_cost = ranked_table(frame, sort_by="ms/token")
    costs = by_cost[~by_cost["reference"]]["ms/token"]
    assert list(costs) == sorted(costs) and by_cost.iloc[0]["ms/token"] == costs.min()
    assert by_cost.set_index(["method", "run"])["rank"].to_dict() == table.set_index(["method", "run"])["rank"].to_dict()
    assert by_cost["reference"].tolist() == sorted(by_cost["reference"].tolist())
    by_name = ranked_table(frame, sort_by="method")
    names = list(by_name[~by_name["reference"]]["method"])
    assert names == sorted(names)
    lower = ranked_table(frame, metric="deletion_auc")  # lower is better: ascending
    means = lower[~lower["reference"]]["mean"]
    assert list(means) == sorted(means)
    shown = ranked_table(frame, intervals=True)
    cell = shown[(shown["method"] == "amortized") & (shown["run"] == "runs/eval50-schema1")]["code"].item()
    ci = shipped["code"]["amortized"]["ci95"]["r2"]
    assert cell == f"{shipped['code']['amortized']['r2']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    with pytest.raises(ValueError, match="unknown metric"):
        ranked_table(frame, metric="accuracy")
    details = run_details(frame, "vattr-tiny", "amortized", "runs/eval50-16heads")
    assert "16-heads.estimator.json" in details and "heads=16" in details and "| code |" in details


def test_the_plot_follows_the_rows_and_keeps_each_method_one_style():
    frame, _ = load_results([SHIPPED])
    fig = tradeoff_plot(frame[frame["benchmark"].isin(["code", "math"])], "lds")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["code", "math"]
    for ax in axes:
        shown = frame[frame["benchmark"] == ax.get_title()]
        points = np.concatenate([c.get_offsets() for c in ax.collections])
        assert sorted(points[:, 1].round(6)) == sorted(shown["lds"].round(6))
        assert sorted(points[:, 0].round(9)) == sorted((shown["sec_per_token"] * 1000).round(9))
    assert "higher is better" in axes[0].get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "ablation (ref)" in legend and len(legend) == len(set(legend))
    # a style comes from the name alone: same for any row order, distinct among the built-ins
    from vattr_bench.methods import BUILTIN

    styles = [method_style(m) for m in BUILTIN]
    assert len(set(styles)) == len(styles) and method_style("my_plugin") == method_style("my_plugin")
    assert tradeoff_plot(frame.iloc[::-1], "lds").get_axes()[0].collections[0].get_facecolor() is not None


def test_demo_input_checks(tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), "white").save(big)
    image, prompt, notes = read_input(str(big), "x" * 5000)
    assert image.size == (1024, 768) and len(prompt) == 400
    assert any("resized from 4000×3000" in n for n in notes) and any("cut to its first 400" in n for n in notes)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png cannot be read as an image"):
        read_input(str(text), "x")
    corrupt = tmp_path / "cut.png"
    corrupt.write_bytes(big.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.png cannot be read as an image"):
        read_input(str(corrupt), "x")
    with pytest.raises(ValueError, match="no image"):
        read_input(None, "x")
    with pytest.raises(ValueError, match="prompt is empty"):
        read_input(image, "   ")


def test_live_demo_streams_tokens_then_one_step_per_span_and_stops():
    session = DemoSession()
    sample = synthetic_sample("math", 3)
    updates = list(session.stream(sample.image, sample.prompt, with_truth=True))
    final = updates[-1]
    assert final.done and final.status.startswith("done: 4 steps")
    assert [s.label for s in final.steps] == ["step 1", "step 2", "step 3", "answer"]
    counts = [len(u.steps) for u in updates]
    assert counts == sorted(counts) and counts[0] < 4  # steps arrive one by one
    texts = [u.text for u in updates]
    assert all(a == b[:len(a)] for a, b in zip(texts, texts[1:])) and "</think>" in final.text
    step = final.steps[0]
    assert step.heatmap.size[0] > 360 and len(np.unique(np.asarray(step.heatmap).reshape(-1, 3), axis=0)) > 8
    assert step.truth is not None and step.truth.shape == step.scores.shape and step.truth_heatmap is not None
    assert step.top_text().count("(") == 3
    # stop: set before the first token, generation ends at once with what arrived
    stop = threading.Event()
    stop.set()
    stopped = list(session.stream(sample.image, sample.prompt, stop=stop))
    assert stopped[-1].done and stopped[-1].status.startswith("stopped") and not stopped[-1].steps


def test_about_text_covers_families_metrics_protocol_citation_and_submitting():
    from vattr_bench.benchmarks import FAMILIES
    from vattr_bench.leaderboard.about import about_markdown

    text = about_markdown()
    for module in FAMILIES.values():
        assert module.DESCRIPTION in text and all(s in text for s in module.PAPER_SETS)
    for metric in METRICS.values():
        assert metric.description in text
    assert DEFAULT_PROTOCOL in text and "2604.16587" in text and "@software{vattr_bench" in text
    assert "vattr-bench submit" in text and "check-submission" in text


def test_the_app_builds(tmp_path):
    import gradio as gr

    assert isinstance(build_app([SHIPPED, tmp_path], submit_dir=tmp_path / "submitted"), gr.Blocks)
