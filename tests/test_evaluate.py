import json

import numpy as np
import pytest

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
REQUIRED = {"r2", "pearson", "lds", "deletion_auc", "insertion_auc", "topk_drop", "pointing_game", "sec_per_token",
            "peak_mem_mb", "n_samples", "n_spans"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    plugin = out / "bad.py"
    plugin.write_text(BAD_PLUGINS)
    cfg = EvalConfig(methods=["ablation", "attention", "random", f"{plugin}:Raises", f"{plugin}:NaNs",
                              f"{plugin}:WrongShape", f"{plugin}:Settled", f"{plugin}:BadSettings", "no_such_method"],
                     benchmark="math,general", limit=2, output_dir=str(out), regions="grid", n_subsets=16,
                     save_heatmaps=True)
    logs = []
    results = evaluate(cfg, log=logs.append)
    return cfg, out, results, logs


def test_results_follow_the_schema(run):
    cfg, out, results, _ = run
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == 1 and saved["model"] == "vattr-tiny"
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


def test_bad_plugins_are_reported_and_others_kept(run):
    cfg, out, results, logs = run
    records = read_records(out / "samples.jsonl")
    errors = {r["method"]: r["error"] for r in records if "error" in r}
    assert "plugin bug" in errors["raises"]
    assert "non-finite" in errors["nans"]
    assert "expected (" in errors["wrong_shape"]
    assert "no_such_method" in json.loads((out / "results.json").read_text())["config"]["method_errors"]
    assert results["results"]["math"]["raises"]["n_failed"] == 2
    assert any("raises failed" in line for line in logs)
    # a method's settings() go into results.json; one that fails is left out with a warning, its scores kept
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["method_settings"] == {"settled": {"temperature": 0.5}}
    assert any("'bad_settings': settings() failed" in line for line in logs)
    assert results["results"]["math"]["bad_settings"]["n_samples"] == 2


def test_resume_skips_what_is_done_and_redoes_a_torn_line(run):
    cfg, out, _, _ = run
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # a kill mid-write
    evaluate(cfg, log=lambda *_: None)
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


def test_a_resumed_run_does_not_mix_settings(tmp_path, monkeypatch):
    """Scores made under other settings (e.g. a retrained estimator saved over the old file) would be two
    methods under one name: the method is stopped for the run, the others go on, and what the folder's
    scores were made under stays recorded — also in a resumed run that had nothing left to score."""
    plugin = tmp_path / "tempered.py"
    plugin.write_text(TEMPERED_PLUGIN)
    cfg = EvalConfig(methods=["random", f"{plugin}:Tempered"], benchmark="math", limit=1,
                     output_dir=str(tmp_path / "out"), regions="grid", n_subsets=4)
    monkeypatch.setenv("TEMPERATURE", "0.5")
    evaluate(cfg, log=lambda *_: None)
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["method_settings"] == {"tempered": {"temperature": "0.5"}}

    monkeypatch.setenv("TEMPERATURE", "0.7")
    logs = []
    results = evaluate(EvalConfig(**{**cfg.__dict__, "limit": 2}), log=logs.append)
    assert results["results"]["math"]["random"]["n_samples"] == 2  # the other method went on
    assert results["results"]["math"]["tempered"]["n_samples"] == 1  # the new sample was not scored
    assert "'temperature': '0.5'" in results["config"]["method_errors"]["tempered"]
    assert any("not mixing them" in line for line in logs)
    assert results["config"]["method_settings"] == {"tempered": {"temperature": "0.5"}}

    monkeypatch.setenv("TEMPERATURE", "0.5")  # back to the folder's settings: the rest is scored
    results = evaluate(EvalConfig(**{**cfg.__dict__, "limit": 2}), log=lambda *_: None)
    assert results["results"]["math"]["tempered"]["n_samples"] == 2
    results = evaluate(EvalConfig(**{**cfg.__dict__, "limit": 2}), log=lambda *_: None)  # nothing left to do
    assert results["config"]["method_settings"] == {"tempered": {"temperature": "0.5"}}


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
    logs = []
    evaluate(cfg, log=logs.append)
    assert not any(f"sample {sample_id} skipped" in line for line in logs)
    after = dict(np.load(cached))
    assert all(np.array_equal(before[k], after[k]) for k in ("token_ids", "effects", "masks", "subset_effects"))
    assert len(read_records(samples)) == len(lines)


def test_ablation_beats_random_per_span(run):
    _, out, _, _ = run
    records = [r for r in read_records(out / "samples.jsonl") if r["method"] in ("ablation", "random")]
    for metric in ("topk_drop", "insertion_auc"):
        by = {m: np.nanmean([v for r in records if r["method"] == m for v in r["span_metrics"][metric] if v is not None])
              for m in ("ablation", "random")}
        assert by["ablation"] > by["random"], metric


def test_cli_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", "--method", "attention", "--ablation", "erase", "--output-dir", str(tmp_path)]) == 2
    assert "unknown ablation operator 'erase'" in capsys.readouterr().err
    assert main(["evaluate", "--method", "attention", "--k", "4", "--output-dir", str(tmp_path)]) == 2
    assert "outside 16–128" in capsys.readouterr().err


def test_a_folder_keeps_one_configuration(run):
    cfg, out, _, _ = run
    other = EvalConfig(**{**cfg.__dict__, "regions": "superpixel"})
    with pytest.raises(ValueError, match="another configuration"):
        evaluate(other, log=lambda *_: None)
