import json
from pathlib import Path

import numpy as np
import pytest

from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.leaderboard import DemoSession, build_app, leaderboard_table, load_results

SHIPPED = Path(__file__).parents[1] / "leaderboard" / "results"


def test_results_load_and_rank_and_bad_files_are_reported(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "estimator.json").write_text(json.dumps({"format": "vattr-bench/linear-estimator"}))
    frame, problems = load_results([SHIPPED, tmp_path, tmp_path / "missing"])
    assert {"amortized", "integrated_gradients", "random"} <= set(frame["method"])
    assert set(frame["benchmark"]) == {"math", "science", "document", "code", "general"}
    assert len(problems) == 2 and any("broken.json" in p for p in problems) and any("no such file" in p for p in problems)
    r2 = leaderboard_table(frame, "r2")
    assert list(r2["mean"]) == sorted(r2["mean"], reverse=True) and r2.iloc[0]["method"] == "ablation"
    assert r2.iloc[-1]["method"] == "random"
    # two amortized rows, told apart by the settings their runs recorded (the estimator)
    amortized = r2[r2["method"] == "amortized"].set_index("run")["settings"]
    assert amortized["runs/eval50"].startswith("path=vattr-tiny.estimator.json") and "heads=64" in amortized["runs/eval50"]
    assert amortized["runs/eval50-16heads"].startswith("path=vattr-tiny.16-heads.estimator.json")
    assert "heads=16" in amortized["runs/eval50-16heads"] and "heldout" not in amortized["runs/eval50-16heads"]
    # the same rows with each cell's 95% interval from its run's results.json
    shown = leaderboard_table(frame, "r2", intervals=True)
    assert list(shown["method"]) == list(r2["method"]) and list(shown["run"]) == list(r2["run"])
    saved = json.loads((SHIPPED / "vattr-tiny-synthetic-test50.json").read_text())["results"]["code"]["amortized"]
    cell = shown[(shown["method"] == "amortized") & (shown["run"] == "runs/eval50")]["code"].item()
    assert cell == f"{saved['r2']:.3f} [{saved['ci95']['r2'][0]:.3f}, {saved['ci95']['r2'][1]:.3f}]"
    old = tmp_path / "old" / "results.json"  # a run from before results.json had intervals
    old.parent.mkdir()
    old.write_text(json.dumps({"model": "m", "config": {"output_dir": "old"}, "results": {"math": {"x": {"r2": 0.5}}}}))
    shown = leaderboard_table(load_results([old])[0], "r2", intervals=True)
    assert shown.loc[0, "math"] == "0.500" and shown.loc[0, "mean"] == 0.5
    deletion = leaderboard_table(frame, "deletion_auc")  # lower is better: ascending
    assert list(deletion["mean"]) == sorted(deletion["mean"])
    with pytest.raises(ValueError, match="unknown metric"):
        leaderboard_table(frame, "accuracy")


def test_the_tradeoff_plot_has_a_panel_per_benchmark_and_a_point_per_row():
    from vattr_bench.leaderboard import leaderboard_plot

    frame, _ = load_results([SHIPPED])
    fig = leaderboard_plot(frame, "lds")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["code", "document", "general", "math", "science"]
    for ax in axes:
        shown = frame[(frame["benchmark"] == ax.get_title()) & (frame["sec_per_token"] > 0)]
        points = np.concatenate([c.get_offsets() for c in ax.collections])
        assert sorted(points[:, 1].round(6)) == sorted(shown["lds"].round(6))
        assert sorted(points[:, 0].round(9)) == sorted(shown["sec_per_token"].round(9))
    assert "lds (higher is better)" in axes[0].get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    # amortized is in two runs: told apart by run; one legend entry per label, amortized's first
    assert legend[:2] == ["amortized (runs/eval50)", "amortized (runs/eval50-16heads)"] and len(legend) == len(set(legend))
    assert "lower is better" in leaderboard_plot(frame, "deletion_auc").get_axes()[0].get_ylabel()
    with pytest.raises(ValueError, match="unknown metric"):
        leaderboard_plot(frame, "accuracy")


def test_settings_summary_is_one_short_line():
    from vattr_bench.leaderboard import settings_summary

    assert settings_summary(None) == "" and settings_summary({}) == ""
    assert settings_summary({"temperature": 0.5, "table": {"a": 1}, "layers": [2, 3]}) == "temperature=0.5 layers=2,3"
    two = {"estimators": [{"path": "/x/a.json", "heads": 8}, {"path": "b.json", "heads": 64}]}
    assert settings_summary(two) == "path=a.json heads=8; path=b.json heads=64"
    long = settings_summary({"note": "x" * 500})
    assert len(long) == 160 and long.endswith("…")


def test_live_demo_streams_one_update_per_span_and_names_bad_input():
    session = DemoSession()
    updates = list(session.stream(synthetic_sample("math", 3).image, "what is the sum of the bars ?"))
    assert len(updates) == 4  # three thinking steps and the answer
    logs = [log for log, _ in updates]
    assert "step 1" in logs[0] and "answer" in logs[-1] and all(a in b for a, b in zip(logs, logs[1:]))
    heat = updates[-1][1]
    assert heat.size == (320, 320) and len(np.unique(np.asarray(heat).reshape(-1, 3), axis=0)) > 4
    with pytest.raises(ValueError, match="no image"):
        list(session.stream(None, "x"))
    with pytest.raises(ValueError, match="prompt is empty"):
        list(session.stream(synthetic_sample("math", 3).image, "   "))


def test_the_app_builds(tmp_path):
    import gradio as gr

    assert isinstance(build_app([SHIPPED, tmp_path]), gr.Blocks)
