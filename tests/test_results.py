"""results.json's aggregates: span means with bootstrap intervals, and paired differences between methods."""
import json

import numpy as np
import pytest

from vattr_bench.cli import main
from vattr_bench.results import aggregate, paired_differences, span_mean_ci


def _record(method, sample, r2, lds=None, benchmark="math"):
    lds = r2 if lds is None else lds
    return {"benchmark": benchmark, "sample_id": sample, "method": method, "n_spans": len(r2),
            "sec_per_token": 0.001, "peak_mem_mb": 1.0,
            "span_metrics": {m: list(r2 if m == "r2" else lds) for m in
                             ("r2", "pearson", "lds", "deletion_auc", "insertion_auc", "topk_drop", "pointing_game")}}


def test_span_mean_interval_resamples_samples_and_is_reproducible():
    rng = np.random.default_rng(0)
    per_sample = [rng.random(rng.integers(2, 6)) for _ in range(40)]
    mean = np.concatenate(per_sample).mean()
    low, high = span_mean_ci(per_sample)
    assert low < mean < high and high - low < 0.25
    assert span_mean_ci(per_sample) == [low, high]  # seeded: the same results.json twice
    # samples resampled whole: a sample's many identical spans do not count as many independent draws
    clustered = [np.full(50, v) for v in rng.random(10)]
    spread = span_mean_ci(clustered)
    flat = span_mean_ci([np.concatenate(clustered)[i::50] for i in range(50)])  # the same values, 50 samples of 10
    assert spread[1] - spread[0] > 2 * (flat[1] - flat[0])
    assert span_mean_ci([np.ones(3), np.ones(2)]) == [1.0, 1.0]  # no spread (ablation's r2)
    assert span_mean_ci([np.ones(3)]) is None and span_mean_ci([np.ones(3), np.zeros(0)]) is None


def test_aggregate_reports_intervals_around_the_means():
    rng = np.random.default_rng(1)
    records = [_record("a", f"s{i}", list(rng.random(3))) for i in range(20)]
    entry = aggregate(records)["math"]["a"]
    for metric in ("r2", "lds"):
        low, high = entry["ci95"][metric]
        assert low < entry[metric] < high


def test_paired_differences_compare_the_spans_both_methods_scored():
    rng = np.random.default_rng(2)
    records = []
    for i in range(12):
        r2 = rng.random(4)
        records += [_record("mine", f"s{i}", list(r2), list(r2 + rng.normal(0, 0.05, 4))),
                    _record("other", f"s{i}", list(r2 - 0.1), list(r2))]
    records.append(_record("mine", "only-mine", [0.9, 0.9]))  # no partner: left out
    records.append({**_record("other", "s0", [0.0]), "sample_id": "broken", "error": "boom"})
    records[0]["span_metrics"]["r2"][1] = None  # a span without a value on one side: left out
    rows = {(r["other"], r["metric"]): r for r in paired_differences(records, "mine")}
    r2 = rows[("other", "r2")]
    assert r2["statistic"] == "difference" and r2["value"] == pytest.approx(0.1) and r2["ci95"] == pytest.approx([0.1, 0.1])
    assert r2["n_samples"] == 12 and r2["n_spans"] == 12 * 4 - 1
    lds = rows[("other", "lds")]
    assert lds["ci95"][0] < lds["value"] < lds["ci95"][1] and abs(lds["value"]) < 0.05
    # the ratio of the two means over the same spans, resampled the same way
    ratio = {(r["other"], r["metric"]): r for r in paired_differences(records, "mine", ratio=True)}[("other", "r2")]
    spans = [(a, b) for rec_a, rec_b in zip(records[0:24:2], records[1:24:2])
             for a, b in zip(rec_a["span_metrics"]["r2"], rec_b["span_metrics"]["r2"]) if a is not None]
    assert ratio["value"] == pytest.approx(sum(a for a, _ in spans) / sum(b for _, b in spans))
    assert ratio["ci95"][0] < ratio["value"] < ratio["ci95"][1]


def test_cli_compare(tmp_path, capsys):
    rng = np.random.default_rng(3)
    lines = [_record(m, f"s{i}", list(rng.random(3) + (0.3 if m == "amortized" else 0))) for i in range(15)
             for m in ("amortized", "attention")]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| math | attention |"))
    assert row.count("[") == 2 and row.endswith("| 15 |")
    assert main(["compare", str(tmp_path), "--metric", "r2", "--ratio"]) == 0
    assert "×" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| math | attention |"))
    assert main(["compare", str(tmp_path), "--metric", "accuracy"]) == 2
    assert "unknown metric accuracy" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--method", "rollout"]) == 2
    assert "no scored sample of 'rollout'; it has: amortized, attention" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "no samples.jsonl" in capsys.readouterr().err


def test_cli_compare_against_another_run_of_the_same_samples(tmp_path, capsys):
    """The same method in two runs (say two estimators), paired sample by sample — only when both runs share
    their traces and ground truth."""
    rng = np.random.default_rng(4)
    base = {f"s{i}": list(rng.random(3)) for i in range(10)}
    for name, shift, key in (("mine", 0.2, "k1"), ("theirs", 0.0, "k1"), ("elsewhere", 0.0, "k2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"ground_truth_key": key}))
        lines = [_record("amortized", sid, [v + shift for v in r2]) for sid, r2 in base.items()]
        (tmp_path / name / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["compare", str(tmp_path / "mine"), "--against", str(tmp_path / "theirs"), "--metric", "r2"]) == 0
    out = capsys.readouterr().out
    assert "| math | amortized @ theirs | +0.200 [+0.200, +0.200] | 10 |" in out
    assert main(["compare", str(tmp_path / "mine"), "--against", str(tmp_path / "elsewhere")]) == 2
    assert "not the same spans" in capsys.readouterr().err


def test_cli_compare_says_how_far_the_methods_scores_moved_between_runs(tmp_path, capsys):
    """With --against, the largest change of the method's region scores over the samples both runs scored:
    0 for a run repeated as it was, the change itself where one score moved."""
    for name, moved in (("before", 0.0), ("same", 0.0), ("after", 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"ground_truth_key": "k"}))
        lines = [{**_record("amortized", f"s{i}", [0.5, 0.4]), "scores": [[1.0, -2.0], [0.5, 0.0 + moved * (i == 1)]]}
                 for i in range(3)]
        (tmp_path / name / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["compare", str(tmp_path / "before"), "--against", str(tmp_path / "same"), "--metric", "r2"]) == 0
    assert "largest difference 0 (largest |score| 2) over the 3 samples both scored" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "before"), "--against", str(tmp_path / "after"), "--metric", "r2"]) == 0
    assert "largest difference 0.25 (largest |score| 2)" in capsys.readouterr().out


def test_cli_compare_by_span_kind(tmp_path, capsys):
    """--by-span-kind: the thinking spans and the answer span of each benchmark as rows of their own, each
    paired over its own spans; a run whose records do not mark answer spans is named."""
    lines = []
    for i in range(4):  # amortized beats attention by 0.3 on thinking spans, by 0.1 on the answer
        for method, thinking, answer in (("amortized", 0.6, 0.3), ("attention", 0.3, 0.2)):
            lines.append({**_record(method, f"s{i}", [thinking, thinking, answer]), "span_is_answer": [False, False, True]})
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["compare", str(tmp_path), "--metric", "r2", "--by-span-kind"]) == 0
    out = capsys.readouterr().out
    assert "| math thinking | attention | +0.300 [+0.300, +0.300] | 4 |" in out
    assert "| math answer | attention | +0.100 [+0.100, +0.100] | 4 |" in out
    unmarked = [_record("amortized", "s0", [0.5]), _record("attention", "s0", [0.2])]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unmarked))
    assert main(["compare", str(tmp_path), "--metric", "r2", "--by-span-kind"]) == 2
    assert "does not mark its answer spans (span_is_answer)" in capsys.readouterr().err
