"""Hard variants of the families and the grounding-trajectory analysis (`vattr-bench trajectory`)."""
import json

import numpy as np
import pytest

from vattr_bench import trajectory
from vattr_bench.benchmarks import FAMILIES, HARD_VARIANTS, load_samples, resolve_families, synthetic_sample
from vattr_bench.models.prompting import is_correct
from vattr_bench.trajectory import (FEATURES, FRACTIONS, TrajectoryConfig, analyse, cut_points, cut_trace,
                                    run_trajectory, trajectory_features)
from vattr_bench.types import THINK_CLOSE, THINK_OPEN


def test_hard_variants_are_deterministic_and_harden_the_standard_sample():
    assert resolve_families("hard") == [f"{f}-hard" for f in FAMILIES]
    assert resolve_families("all") == list(FAMILIES)  # 'all' stays the five standard families
    assert resolve_families("math-hard,math") == ["math-hard", "math"]
    for family in HARD_VARIANTS:
        a, b = synthetic_sample(family, 4), synthetic_sample(family, 4)
        assert a.id == b.id == f"{family}-test-0-4" and a.family == family
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        plain = synthetic_sample(HARD_VARIANTS[family].base.FAMILY, 4)
        # the same scene, question, steps and answer; other pixels
        assert (a.prompt, a.reference, a.reference_trace) == (plain.prompt, plain.reference, plain.reference_trace)
        assert not np.array_equal(np.asarray(a.image), np.asarray(plain.image))
        assert not np.array_equal(np.asarray(a.image), np.asarray(synthetic_sample(family, 4, seed=1).image))


def test_a_hard_variant_has_no_real_set():
    with pytest.raises(ValueError, match="no real set"):
        load_samples("math-hard", 1, source="real")


def test_vattr_tiny_fails_on_hard_samples_with_well_formed_traces(tiny):
    # code-hard, split test, seed 0: the first eight samples, of which vattr-tiny answers some wrong
    outcomes = []
    for i in range(8):
        s = synthetic_sample("code-hard", i)
        trace = tiny.generate(tiny.prepare(s.image, s.prompt), max_new_tokens=128)
        assert trace.text.startswith(THINK_OPEN) and THINK_CLOSE in trace.text and trace.answer, trace.text
        outcomes.append(is_correct(trace.answer, s.reference))
    assert 0 < outcomes.count(False) < len(outcomes), outcomes


def test_cuts_see_the_spans_begun_and_cut_the_one_in_progress(tiny):
    s = synthetic_sample("math", 0)
    trace = tiny.generate(tiny.prepare(s.image, s.prompt), max_new_tokens=64)
    cuts = cut_points(len(trace.token_ids), trace.spans[0].start)
    assert len(cuts) == len(FRACTIONS) and cuts[-1] == len(trace.token_ids) and cuts == sorted(cuts)
    assert cuts[0] > trace.spans[0].start  # the first cut already holds a token of the first span
    seen = cut_trace(trace, 8)
    assert all(sp.start < 8 and sp.end <= 8 for sp in seen.spans) and len(seen.token_ids) == 8
    assert cut_trace(trace, len(trace.token_ids)).spans == trace.spans


def test_features_on_constructed_attributions():
    evidence = np.array([1.0, 0.0, 0.0, 0.0])
    one_region = np.array([[2.0, 0, 0, 0], [3.0, 0, 0, 0]])
    top, entropy, on_evidence, change, reliance = trajectory_features(one_region, np.array([2, 2]), evidence, False)
    assert (top, entropy, on_evidence, change, reliance) == (1.0, 0.0, 1.0, 0.0, 2.5)
    spread = np.ones((2, 4))
    top, entropy, on_evidence, change, _ = trajectory_features(spread, np.array([1, 1]), evidence, False)
    assert top == 0.25 and entropy == pytest.approx(1.0) and on_evidence == 0.25 and change == 0.0
    moved = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert trajectory_features(moved, np.array([4, 4]), evidence, True)[3] == 1.0  # the whole focus moved
    assert trajectory_features(moved, np.array([4, 4]), evidence, True)[4] == 0.25  # per token: 1 / 4


def _records(failed: list[bool], rng) -> list[dict]:
    """Records as sample_record writes them, whose top_mass rises with failure (a signal to find)."""
    out = []
    for wrong in failed:
        scores = rng.random((len(FRACTIONS), 3, 16))
        scores[:, :, 0] += 4.0 * wrong + rng.random()
        out.append({"correct": not wrong, "amortized": scores, "ablation": scores[::-1].copy(),
                    "span_tokens": np.full((len(FRACTIONS), 3), 5.0), "region_evidence": rng.random(16)})
    return out


def test_analysis_finds_a_planted_signal_and_reports_in_range():
    rng = np.random.default_rng(0)
    failed = [i % 3 == 0 for i in range(30)]
    report = analyse(_records(failed, rng), ["a"] * 15 + ["b"] * 15, TrajectoryConfig(n_bootstrap=200))
    assert report["n_samples"] == 30 and report["failure_rate"] == pytest.approx(10 / 30)
    for key in ("auc", "auc_ablation"):
        assert list(report[key]) == [str(f) for f in FRACTIONS]
        for f, auc in report[key].items():
            lo, hi = report["ci95"][key][f]
            assert 0.0 <= lo <= auc <= hi <= 1.0
            assert auc > 0.9  # failures carry 4× the mass on one region: easy to tell apart


def test_all_right_or_all_wrong_is_a_clear_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="AUC is undefined here: 0 of 6"):
        analyse(_records([False] * 6, rng), ["a"] * 6, TrajectoryConfig())
    with pytest.raises(ValueError, match="AUC is undefined here: 6 of 6"):
        analyse(_records([True] * 6, rng), ["a"] * 6, TrajectoryConfig())


def test_per_token_ablation_equals_the_cut_trace_s_own(tiny):
    from vattr_bench.methods.amortized import Amortized
    from vattr_bench.regions import make_regions, single_region_effects

    s = synthetic_sample("general-hard", 1)
    cfg = TrajectoryConfig()
    record = trajectory.sample_record(tiny, s, Amortized().load_for(tiny, cfg.regions, cfg.ablation), cfg)
    prepared = tiny.prepare(s.image, s.prompt)
    trace = tiny.trace_from_ids(prepared, record["token_ids"].tolist())
    regions, _ = make_regions(cfg.regions, tiny, prepared, k=cfg.k)
    for i in (0, 3, 9):
        seen = cut_trace(trace, cut_points(len(trace.token_ids), trace.spans[0].start)[i])
        direct = single_region_effects(tiny, prepared, seen, regions, cfg.ablation)
        np.testing.assert_allclose(record["ablation"][i, :len(seen.spans)], direct, atol=1e-3)
        assert np.isnan(record["ablation"][i, len(seen.spans):]).all()


@pytest.mark.slow
def test_run_writes_the_report_and_a_resumed_run_recomputes_nothing(tmp_path, monkeypatch):
    cfg = TrajectoryConfig(benchmark="code-hard", limit=8, output_dir=str(tmp_path), n_bootstrap=200, folds=2)
    first = run_trajectory(cfg)
    saved = json.loads((tmp_path / "trajectory.json").read_text())
    assert {"auc", "auc_ablation", "ci95", "n_samples", "failure_rate"} <= set(saved)
    assert set(saved["ci95"]) == {"auc", "auc_ablation"} and saved["features"] == list(FEATURES)
    assert saved["n_samples"] == 8 and 0 < saved["failure_rate"] < 1
    assert (tmp_path / "trajectory.png").stat().st_size > 0

    def recompute(*args, **kwargs):
        raise AssertionError("a cached sample was computed again")

    monkeypatch.setattr(trajectory, "sample_record", recompute)
    assert run_trajectory(cfg)["auc"] == first["auc"]
    with pytest.raises(ValueError, match="use a new --output-dir"):
        run_trajectory(TrajectoryConfig(**{**cfg.__dict__, "seed": 1}))
