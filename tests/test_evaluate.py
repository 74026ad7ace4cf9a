import json

import numpy as np
import pytest

from logs import kept_logs
from vattr_bench.cli import main
from vattr_bench.evaluate import EvalConfig, evaluate
from vattr_bench.results import read_records

BAD_PLUGINS = '''
import numpy as np

class Raises:
    name = "raises"
    def attribute(self, ctx):
        raise RuntimeError("plugin bug")

class NaNs:
    name = "nans"
    def attribute(self, ctx):
        return np.full((ctx.n_spans, ctx.regions.k), np.nan)

class WrongShape:
    name = "wrong_shape"
    def attribute(self, ctx):
        return np.zeros((ctx.n_spans + 1, 3))

class Settled:  # scores fine; says what decides them, once well and once badly
    name = "settled"
    def attribute(self, ctx):
        return np.ones((ctx.n_spans, ctx.regions.k))
    def settings(self):
        return {"temperature": 0.5}

class BadSettings(Settled):
    name = "bad_settings"
    def settings(self):
        return {"array": np.zeros(2)}  # not JSON
'''
REQUIRED = {"r2_signed", "r2", "r2_partial_size", "pearson", "lds", "deletion_auc", "insertion_auc", "topk_drop",
            "pointing_game", "sec_per_token", "peak_mem_mb", "n_samples", "n_spans", "n_spans_scored",
            "n_spans_undefined", "n_failed", "reference", "reads_ground_truth", "flags"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    plugin = out / "bad.py"
    plugin.write_text(BAD_PLUGINS)
    cfg = EvalConfig(methods=["ablation", "attention", "random", f"{plugin}:Raises", f"{plugin}:NaNs",
                              f"{plugin}:WrongShape", f"{plugin}:Settled", f"{plugin}:BadSettings"],
                     benchmark="math,general", limit=2, output_dir=str(out), regions="grid", n_subsets=16,
                     save_heatmaps=True)
    with kept_logs() as logs:
        results = evaluate(cfg)
    return cfg, out, results, logs


@pytest.mark.slow  # the shared `run` evaluation: 340 s on a loaded 2-core machine
def test_results_follow_the_schema(run):
    cfg, out, results, _ = run
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == 2 and saved["model"] == "vattr-tiny" and saved["ranking_metric"] == "r2_signed"
    assert saved["config"]["regions"] == "grid" and saved["config"]["ablation"] == "knockout"
    assert {"versions", "git_hash", "date", "higher_is_better", "results"} <= set(saved)
    for bench in ("math", "general"):
        for method in ("ablation", "attention", "random"):
            entry = saved["results"][bench][method]
            assert REQUIRED <= set(entry) and entry["n_samples"] == 2
        assert saved["results"][bench]["ablation"]["r2"] == pytest.approx(1.0)
        assert saved["results"][bench]["ablation"]["r2"] > saved["results"][bench]["random"]["r2"]
    assert saved["higher_is_better"]["deletion_auc"] is False and saved["higher_is_better"]["lds"] is True
    assert (out / "tradeoff.png").stat().st_size > 0  # r2 against cost per token, a panel per benchmark
    pictures = sorted((out / "heatmaps" / "math").glob("*.png"))  # one per sample: truth + each method
    assert len(pictures) == 2 and pictures[0].stat().st_size > 0


def test_git_hash_is_dirty_for_the_package_not_its_docs(tmp_path):
    """results.json's git_hash: HEAD, "-dirty" only when the package's own tracked files differ from it."""
    import subprocess

    from vattr_bench.results import _git_hash

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "code.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert _git_hash(package) == head
    (tmp_path / "README.md").write_text("docs edited mid-run\n")
    (package / "new.py").write_text("untracked\n")
    assert _git_hash(package) == head
    (package / "code.py").write_text("x = 2\n")
    assert _git_hash(package) == head + "-dirty"


@pytest.mark.slow  # uses the 340 s `run` on a loaded 2-core machine
def test_bad_plugins_are_reported_and_others_kept(run):
    cfg, out, results, logs = run
    records = read_records(out / "samples.jsonl")
    errors = {r["method"]: r["error"] for r in records if "error" in r}
    assert "plugin bug" in errors["raises"]
    assert "non-finite" in errors["nans"]
    assert "expected (" in errors["wrong_shape"]
    assert results["results"]["math"]["raises"]["n_failed"] == 2
    assert any("raises failed" in line for line in logs)
    # a method's settings() go into results.json; one that fails is left out with a warning, its scores kept
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["method_settings"] == {"settled": {"temperature": 0.5}}
    assert any("'bad_settings': settings() failed" in line for line in logs)
    assert results["results"]["math"]["bad_settings"]["n_samples"] == 2


@pytest.mark.slow  # uses the 340 s `run` on a loaded 2-core machine
def test_resume_skips_what_is_done_and_redoes_a_torn_line(run):
    cfg, out, _, _ = run
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # a kill mid-write
    evaluate(cfg)
    again = read_records(path)
    assert len(again) == len(lines)  # only the torn record was recomputed
    assert len({(r["benchmark"], r["sample_id"], r["method"]) for r in again}) == len(lines)


TEMPERED_PLUGIN = """
import os
import numpy as np

class Tempered:  # what decides its scores comes from the environment, so a test can change it between runs
    name = "tempered"
    def attribute(self, ctx):
        return np.ones((ctx.n_spans, ctx.regions.k))
    def settings(self):
        return {"temperature": os.environ["TEMPERATURE"]}
"""


@pytest.mark.slow  # 58 s on a loaded 2-core machine
def test_a_resumed_run_does_not_mix_settings(tmp_path, monkeypatch):
    """Scores made under other settings (e.g. a retrained estimator saved over the old file) would be two
    methods under one name: the method is stopped for the run, the others go on, and what the folder's
    scores were made under stays recorded — also in a resumed run that had nothing left to score."""
    plugin = tmp_path / "tempered.py"
    plugin.write_text(TEMPERED_PLUGIN)
    cfg = EvalConfig(methods=["random", f"{plugin}:Tempered"], benchmark="math", limit=1,
                     output_dir=str(tmp_path / "out"), regions="grid", n_subsets=4)
    monkeypatch.setenv("TEMPERATURE", "0.5")
    evaluate(cfg)
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["method_settings"] == {"tempered": {"temperature": "0.5"}}

    monkeypatch.setenv("TEMPERATURE", "0.7")
    with kept_logs() as logs:
        results = evaluate(EvalConfig(**{**cfg.__dict__, "limit": 2}))
    assert results["results"]["math"]["random"]["n_samples"] == 2  # the other method went on
    assert results["results"]["math"]["tempered"]["n_samples"] == 1  # the new sample was not scored
    assert "'temperature': '0.5'" in results["config"]["method_errors"]["tempered"]
    assert any("not mixing them" in line for line in logs)
    assert results["config"]["method_settings"] == {"tempered": {"temperature": "0.5"}}

    monkeypatch.setenv("TEMPERATURE", "0.5")  # back to the folder's settings: the rest is scored
    results = evaluate(EvalConfig(**{**cfg.__dict__, "limit": 2}))
    assert results["results"]["math"]["tempered"]["n_samples"] == 2
    results = evaluate(EvalConfig(**{**cfg.__dict__, "limit": 2}))  # nothing left to do
    assert results["config"]["method_settings"] == {"tempered": {"temperature": "0.5"}}


@pytest.mark.slow  # 53 s, and the 340 s `run` on a loaded 2-core machine
def test_a_kill_mid_write_leaves_the_old_file_and_a_torn_cache_is_recomputed(run, tmp_path):
    from vattr_bench.storage import write_text_atomically, replace_atomically

    target = tmp_path / "records.jsonl"
    write_text_atomically(target, "old\n")

    def killed(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(target, killed)
    assert target.read_text() == "old\n"
    # a ground-truth file torn some other way (a run before the writes were atomic) is computed again
    cfg, out, _, _ = run
    cached = sorted((out / "cache").rglob("*.npz"))[0]
    before = dict(np.load(cached))
    cached.write_bytes(cached.read_bytes()[:200])
    samples = out / "samples.jsonl"
    lines = samples.read_text().splitlines()
    sample_id = cached.stem
    samples.write_text("".join(line + "\n" for line in lines if json.loads(line)["sample_id"] != sample_id))
    with kept_logs() as logs:
        evaluate(cfg)
    assert not any(f"sample {sample_id} skipped" in line for line in logs)
    after = dict(np.load(cached))
    assert all(np.array_equal(before[k], after[k]) for k in ("token_ids", "effects", "masks", "subset_effects"))
    assert len(read_records(samples)) == len(lines)


@pytest.mark.slow  # uses the 340 s `run` on a loaded 2-core machine
def test_ablation_beats_random_per_span(run):
    _, out, _, _ = run
    records = [r for r in read_records(out / "samples.jsonl") if r["method"] in ("ablation", "random")]
    for metric in ("topk_drop", "insertion_auc"):
        by = {m: np.nanmean([v for r in records if r["method"] == m for v in r["span_metrics"][metric] if v is not None])
              for m in ("ablation", "random")}
        assert by["ablation"] > by["random"], metric


def test_cli_evaluate_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # refused by the parser's choices, before anything loads
        main(["evaluate", "--method", "attention", "--ablation", "erase", "--output-dir", str(tmp_path)])
    assert stop.value.code == 2 and "invalid choice: 'erase'" in capsys.readouterr().err
    assert main(["evaluate", "--method", "attention", "--k", "4", "--output-dir", str(tmp_path)]) == 2
    assert "outside 16–128" in capsys.readouterr().err


@pytest.mark.slow  # uses the 340 s `run` on a loaded 2-core machine
def test_a_folder_keeps_one_configuration(run):
    cfg, out, _, _ = run
    other = EvalConfig(**{**cfg.__dict__, "regions": "superpixel"})
    with pytest.raises(ValueError, match="another configuration"):
        evaluate(other)


def test_a_misspelt_method_stops_the_run_before_any_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="unknown method 'atention'"):
        evaluate(EvalConfig(methods=["attention", "atention"], benchmark="math", limit=1, output_dir=str(out)))
    assert not out.exists()  # no empty folder left behind


@pytest.mark.slow  # uses the 340 s `run` on a loaded 2-core machine
def test_records_name_their_spans_and_references(run):
    _, out, results, _ = run
    records = {(r["method"], r["sample_id"]): r for r in read_records(out / "samples.jsonl") if "error" not in r}
    some = next(r for (m, _), r in records.items() if m == "attention")
    assert len(some["span_texts"]) == some["n_spans"] and all(isinstance(t, str) and t for t in some["span_texts"])
    # the answer span (the text after </think>) is marked; a trace cut before it has none
    assert all(len(r["span_is_answer"]) == r["n_spans"] and sum(r["span_is_answer"]) <= 1 for r in records.values())
    assert any(r["span_is_answer"][-1] for r in records.values())
    math = results["results"]["math"]
    assert math["ablation"]["reference"] and math["ablation"]["reads_ground_truth"]
    assert math["random"]["reference"] and not math["random"]["reads_ground_truth"]
    assert not math["attention"]["reference"] and math["attention"]["n_failed"] == 0


INTEGRITY_PLUGINS = '''
import time
import numpy as np

class Peeker:  # reads the truth without declaring it
    name = "peeker"
    def attribute(self, ctx):
        return ctx.ablation_effects()

class CachePeeker:  # looks for the truth where the harness used to keep it
    name = "cache_peeker"
    def attribute(self, ctx):
        return ctx.cache["single_region_effects"]

class Vandal:  # declares it reads the truth, then writes over everything it is handed
    name = "vandal"
    reads_ground_truth = True
    def attribute(self, ctx):
        effects = ctx.ablation_effects()
        try:
            effects[...] = 0.0
        except ValueError:
            pass  # read-only: good
        ctx.trace.logprobs[...] = 0.0
        ctx.trace.spans.clear()
        ctx.regions.token_matrix[...] = False
        ctx.prepared.inputs["input_ids"].zero_()
        ctx.sample.steps.clear()
        return np.zeros((0, ctx.regions.k))

class Abstainer:  # flat scores on every span but the first
    name = "abstainer"
    def attribute(self, ctx):
        scores = np.ones((ctx.n_spans, ctx.regions.k))
        scores[0] = np.arange(ctx.regions.k)
        return scores

class Sleeper:  # hangs, and tries to swallow the interruption
    name = "sleeper"
    def attribute(self, ctx):
        try:
            time.sleep(60)
        except Exception:
            pass
        return np.ones((ctx.n_spans, ctx.regions.k))
'''


@pytest.fixture(scope="module")
def integrity_run(tmp_path_factory):
    """The same samples scored with and without hostile plugins between the honest methods."""
    base = tmp_path_factory.mktemp("integrity")
    plugin = base / "hostile.py"
    plugin.write_text(INTEGRITY_PLUGINS)
    # feature-ward regions differ in size, so region_area is not flat
    common = dict(benchmark="math", limit=2, regions="feature-ward", n_subsets=8, method_timeout_s=2.0)
    clean = evaluate(EvalConfig(methods=["random", "attention", "ablation", "uniform", "region_area"],
                                output_dir=str(base / "clean"), **common))
    hostile_methods = [f"{plugin}:Vandal", "random", f"{plugin}:Peeker", f"{plugin}:CachePeeker", "attention",
                       f"{plugin}:Vandal", "ablation", f"{plugin}:Abstainer", f"{plugin}:Sleeper", "uniform",
                       "region_area"]
    hostile_methods.remove(f"{plugin}:Vandal")  # once is enough (names must be unique)
    with kept_logs() as logs:
        hostile = evaluate(EvalConfig(methods=hostile_methods, output_dir=str(base / "hostile"), **common))
    return clean, hostile, base, logs


def test_undeclared_truth_readers_get_an_error_not_the_truth(integrity_run):
    _, hostile, base, _ = integrity_run
    errors = {r["method"]: r["error"] for r in read_records(base / "hostile" / "samples.jsonl") if "error" in r}
    assert "GroundTruthAccessError" in errors["peeker"]
    assert "KeyError" in errors["cache_peeker"]  # the truth is not in the cache of a method that did not declare it
    assert hostile["results"]["math"]["peeker"]["n_failed"] == 2


def test_a_method_cannot_change_what_others_see_or_how_they_score(integrity_run):
    clean, hostile, base, _ = integrity_run

    def per_span(run):
        return {(r["method"], r["sample_id"]): r["span_metrics"] for r in read_records(base / run / "samples.jsonl")
                if "error" not in r and r["method"] in ("random", "attention", "ablation", "uniform", "region_area")}
    before, after = per_span("clean"), per_span("hostile")
    assert set(before) == set(after) and len(before) == 10
    for key, metrics in before.items():
        for metric, values in metrics.items():
            assert after[key][metric] == pytest.approx(values, abs=1e-9, nan_ok=True), (key, metric)
    assert hostile["results"]["math"]["vandal"]["n_failed"] == 2  # its own empty answer is an error
    assert hostile["results"]["math"]["vandal"]["reference"]


def test_flat_scores_count_as_zero_and_are_flagged(integrity_run):
    _, hostile, base, _ = integrity_run
    records = [r for r in read_records(base / "hostile" / "samples.jsonl") if r["method"] == "abstainer"]
    entry = hostile["results"]["math"]["abstainer"]
    assert entry["n_spans_undefined"] == sum(r["n_spans"] - 1 for r in records) > 0
    assert entry["n_spans_scored"] == sum(r["n_spans"] for r in records)
    for r in records:
        assert r["undefined_spans"] == list(range(1, r["n_spans"]))
        assert all(v == 0.0 for v in r["span_metrics"]["r2"][1:])  # counted, not dropped
    assert any("flat" in flag for flag in entry["flags"])
    assert entry["r2"] == pytest.approx(np.mean([v for r in records for v in r["span_metrics"]["r2"]]))


def test_a_hanging_method_is_stopped_and_recorded(integrity_run):
    _, hostile, base, logs = integrity_run
    errors = [r["error"] for r in read_records(base / "hostile" / "samples.jsonl") if r["method"] == "sleeper"]
    assert len(errors) == 2 and all("time limit of 2 s" in e for e in errors)
    assert hostile["results"]["math"]["sleeper"]["n_failed"] == 2


def test_null_baselines(integrity_run):
    clean, _, base, _ = integrity_run
    math = clean["results"]["math"]
    assert math["uniform"]["r2"] == 0.0 and math["uniform"]["r2_signed"] == 0.0
    assert math["uniform"]["r2_partial_size"] == 0.0
    assert math["uniform"]["n_spans_undefined"] == math["uniform"]["n_spans_scored"]
    # the LDS floor: a subset's predicted effect is its size, and bigger subsets remove more
    assert math["uniform"]["lds"] > 0.05
    assert math["region_area"]["r2_partial_size"] == 0.0  # size explains its scores entirely
    records = [r for r in read_records(base / "clean" / "samples.jsonl") if r["method"] == "region_area"]
    assert records and all(r["undefined_spans"] == [] for r in records)  # a ranking of regions: defined
    for name in ("uniform", "region_area", "random", "ablation"):
        assert math[name]["reference"], name


def test_random_subsets_differ_per_sample(integrity_run):
    _, _, base, _ = integrity_run
    caches = sorted((base / "clean" / "cache").rglob("*.npz"))
    assert len(caches) == 2
    masks = [np.load(c)["masks"] for c in caches]
    assert masks[0].shape == masks[1].shape and not np.array_equal(masks[0], masks[1])
