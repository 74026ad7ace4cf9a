import json
from pathlib import Path

import numpy as np
import pytest

from vattr_bench.cli import main
from vattr_bench.leaderboard import load_results
from vattr_bench.metrics.registry import SPAN_METRICS
from vattr_bench.results import build_results
from vattr_bench.submission import (MAX_RESULTS_BYTES, check_path, existing_digests, store_submission,
                                    validate_submission)

SHIPPED = Path(__file__).parents[1] / "leaderboard" / "results"
CONFIG = {"regions": "feature-ward", "k": 16, "ablation": "knockout", "split": "test", "source": "synthetic",
          "n_subsets": 32, "seed": 0, "limit": 3, "output_dir": "runs/mine", "methods": ["mine"]}


def _records(seed=0):
    """samples.jsonl lines as evaluate writes them: 3 samples × 2 benchmarks, 4 spans each, one failure."""
    rng = np.random.default_rng(seed)
    records = []
    for benchmark in ("math", "code"):
        for i in range(3):
            span_metrics = {m: rng.uniform(0, 1, 4).tolist() for m in SPAN_METRICS}
            records.append({"benchmark": benchmark, "sample_id": f"{benchmark}-{i}", "method": "mine", "n_spans": 4,
                            "n_tokens": 20, "k": 16, "sec_per_token": float(rng.uniform(1e-4, 1e-3)),
                            "peak_mem_mb": 1.0, "span_metrics": span_metrics, "scores": np.zeros((4, 16)).tolist()})
        records.append({"benchmark": benchmark, "sample_id": f"{benchmark}-9", "method": "mine", "n_spans": 0,
                        "error": "ValueError: boom"})
    return records


def _bundle(seed=0):
    records = _records(seed)
    results = build_results("vattr-tiny", dict(CONFIG), records)
    return json.dumps(results).encode(), "".join(json.dumps(r) + "\n" for r in records).encode(), results, records


def test_a_valid_submission_passes_and_is_stored_under_its_digest(tmp_path):
    results, samples, payload, _ = _bundle()
    checked = validate_submission(results, samples, existing_digests(load_results([SHIPPED])[0]))
    assert checked.ok, checked.problems
    folder = store_submission(checked, results, samples, tmp_path / "submitted")
    assert folder.parent == (tmp_path / "submitted").resolve() and folder.name == checked.digest
    assert json.loads((folder / "status.json").read_text())["status"] == "pending review"
    frame, problems = load_results([tmp_path])
    assert not problems and set(frame["status"]) == {"pending review"} and set(frame["method"]) == {"mine"}
    # the same numbers again are a duplicate, whatever the file is called or when it was written
    again = validate_submission(json.dumps({**payload, "date": "later"}).encode(), None, existing_digests(frame),
                                "copy.json")
    assert any("already on the leaderboard" in p for p in again.problems)
    with pytest.raises(ValueError, match="already stored"):
        store_submission(checked, results, samples, tmp_path / "submitted")


def test_every_problem_is_listed_in_plain_words():
    results, samples, payload, records = _bundle()
    bad = json.loads(results)
    bad["schema_version"] = 1
    del bad["config"]["k"]
    bad["config"]["ablation"] = "explode"
    entry = bad["results"]["math"]["mine"]
    entry["r2"] = 1.7
    entry["lds"] = "high"
    del entry["n_spans"]
    bad["results"]["chess"] = {"x": {}}
    bad["results"]["code"]["<script>alert(1)</script>"] = bad["results"]["code"]["mine"]
    problems = validate_submission(json.dumps(bad).encode(), None).problems
    text = "\n".join(problems)
    assert "config lacks k" in text and "config.ablation is 'explode'" in text
    assert "results.math.mine.r2 is 1.7, outside its range [0, 1]" in text
    assert "results.math.mine.lds is 'high', not a finite number" in text
    assert "results.math.mine: the key 'n_spans' is missing" in text
    assert "benchmark 'chess' is not one of" in text and "method name '<script>" in text
    assert validate_submission(b"{nope", None).problems[0].startswith("results.json is not valid JSON")
    assert "schema_version is 7" in validate_submission(json.dumps({**payload, "schema_version": 7}).encode()).problems[0]
    assert "must hold a JSON object" in validate_submission(b"[1, 2]").problems[0]


def test_samples_must_agree_with_the_aggregates():
    results, samples, payload, records = _bundle()
    forged = json.loads(results)
    forged["results"]["math"]["mine"]["insertion_auc"] = 0.99  # in range, but not what the samples say
    forged["results"]["code"]["mine"]["n_samples"] = 30
    problems = validate_submission(json.dumps(forged).encode(), samples).problems
    assert any("mine on math: results.json says insertion_auc 0.99, the mean over samples.jsonl's spans is" in p
               for p in problems), problems
    assert any("mine on code: results.json says n_samples 30, samples.jsonl has 3" in p for p in problems)
    other = [r for r in records if r["benchmark"] == "math"]
    lines = "".join(json.dumps(r) + "\n" for r in other).encode()
    problems = validate_submission(results, lines + b"{torn").problems
    assert problems == ["samples.jsonl line 5 is not valid JSON (Expecting property name enclosed in double quotes)"]
    problems = validate_submission(results, lines).problems
    assert problems == ["samples.jsonl has no line for mine on code, which results.json reports"]


def test_archives_huge_files_and_hostile_names_are_refused_unread():
    import gzip

    results, samples, _, _ = _bundle()
    assert "is an archive (gzip)" in validate_submission(gzip.compress(results)).problems[0]
    assert "is an archive (zip)" in validate_submission(b"PK\x03\x04" + results).problems[0]
    huge = results + b" " * MAX_RESULTS_BYTES
    assert "the limit is 4 MB" in validate_submission(huge).problems[0]
    assert "not a plain file name" in validate_submission(results, None, results_name="../../etc/passwd").problems[0]
    with pytest.raises(ValueError, match="passed validation"):
        store_submission(validate_submission(b"{}"), b"{}", None, Path("/tmp"))


def test_check_submission_command(tmp_path, capsys):
    results, samples, _, _ = _bundle()
    (tmp_path / "results.json").write_bytes(results)
    (tmp_path / "samples.jsonl").write_bytes(samples)
    assert main(["check-submission", str(tmp_path), "--against", str(SHIPPED)]) == 0
    assert "valid submission" in capsys.readouterr().out
    # its own file is not its own duplicate; a copy elsewhere is
    assert check_path(tmp_path / "results.json", against=[tmp_path]) == []
    copy = tmp_path / "copy" / "results.json"
    copy.parent.mkdir()
    copy.write_bytes(results)
    assert any("already on the leaderboard" in p for p in check_path(tmp_path, against=[copy.parent]))
    (tmp_path / "samples.jsonl").write_bytes(samples.replace(b'"n_spans": 4', b'"n_spans": 5', 1))
    assert main(["check-submission", str(tmp_path), "--against"]) == 1
    out = capsys.readouterr().out
    assert "1 problem:" in out and "n_spans 12, samples.jsonl has 13" in out
    assert main(["check-submission", str(tmp_path / "nowhere")]) == 2


# hypothesis: whatever a hostile or broken upload holds, the validator answers with problems, never raises ------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)
_keys = st.sampled_from(["schema_version", "model", "config", "results", "ranking_metric", "../x", "\x00"])
_payload = st.dictionaries(_keys, _json, max_size=5) | _json


def _good_payload():
    return build_results("vattr-tiny", CONFIG, _records())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payload, raw=st.binary(max_size=64), mutate=st.booleans())
def test_fuzzed_uploads_are_answered_with_problems_never_an_exception(payload, raw, mutate):
    if mutate:  # a valid results.json with one part replaced by anything
        good = _good_payload()
        key = sorted(good)[len(raw) % len(good)]
        good[key] = payload
        results = json.dumps(good, default=str).encode()
    else:
        results = raw if len(raw) % 2 else json.dumps(payload, default=str).encode()
    samples = raw if len(raw) % 3 == 0 else None
    checked = validate_submission(results, samples)
    assert isinstance(checked.problems, list) and all(isinstance(p, str) and p for p in checked.problems)
    assert checked.ok is (not checked.problems)
