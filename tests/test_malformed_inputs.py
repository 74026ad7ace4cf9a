"""Nothing silent, nothing fatal: a damaged cache is reported and recomputed; a malformed results file is
reported and never stops the leaderboard; samples.jsonl and the region protocols, fuzzed (hypothesis), give
valid results or a clear error."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vattr_bench.storage import load_arrays, save_arrays

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# storage: a cache file that cannot be read is reported and recomputed ---------------------------------------

def _cut(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, reason", [
    (_cut, "not an .npz archive"),
    (lambda p: p.write_bytes(b"garbage"), "not an .npz archive"),
    (lambda p: (p.unlink(), p.mkdir()), "not an .npz archive"),
    (lambda p: np.save(p.open("wb"), np.arange(3)), "not an .npz archive"),  # an .npy under the .npz's name
])
def test_an_unreadable_cache_file_is_reported_and_recomputed(damage, reason, tmp_path, caplog):
    path = tmp_path / "sample.npz"
    save_arrays(path, effects=np.ones((2, 3)), token_ids=np.arange(4))
    assert set(load_arrays(path, ("effects",))) == {"effects", "token_ids"}
    damage(path)
    with caplog.at_level(logging.WARNING, logger="vattr_bench.storage"):
        assert load_arrays(path, ("effects",)) is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING and str(path) in record.getMessage()
    assert reason in record.getMessage() and "computing it again" in record.getMessage()


def test_a_cache_file_missing_an_array_is_reported(tmp_path, caplog):
    path = tmp_path / "sample.npz"
    save_arrays(path, effects=np.ones(2))
    with caplog.at_level(logging.WARNING, logger="vattr_bench.storage"):
        assert load_arrays(path, ("effects", "masks")) is None
    assert "lacks masks" in caplog.text and str(path) in caplog.text


def test_an_absent_cache_file_is_quietly_none(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="vattr_bench.storage"):
        assert load_arrays(tmp_path / "none.npz") is None
    assert caplog.records == []


# the leaderboard's loader: each malformed shape reported, none fatal, the good files still read -------------

GOOD = {"schema_version": 2, "model": "vattr-tiny", "config": {"regions": "feature-ward", "k": 16},
        "results": {"math": {"amortized": {"r2_signed": 0.5, "r2": 0.5, "lds": 0.4, "n_samples": 3, "n_spans": 9}}}}

MALFORMED = {
    "metric is text": {"results": {"math": {"amortized": {"r2": "abc"}}}},
    "metric is a list": {"results": {"math": {"amortized": {"r2": [0.1, 0.2]}}}},
    "metric is a table": {"results": {"math": {"amortized": {"lds": {"mean": 0.3}}}}},
    "metric is a boolean": {"results": {"math": {"amortized": {"r2": True}}}},
    "metric overflows a float": '{"results": {"math": {"amortized": {"r2": 1' + "0" * 400 + '}}}}',
    "results is a list": {"results": [1, 2]},
    "results is text": {"results": "none"},
    "benchmark is a list": {"results": {"math": [0.5]}},
    "method is a number": {"results": {"math": {"amortized": 3}}},
    "config is text": {"config": "feature-ward", "results": {"math": {"amortized": {"r2": 0.5}}}},
    "schema_version is text": {"schema_version": "two", "results": {"math": {"amortized": {"r2": 0.5}}}},
    "schema_version is null": {"schema_version": None, "results": {"math": {"amortized": {"r2": 0.5}}}},
    "n_failed is text": {"results": {"math": {"amortized": {"r2": 0.5, "n_failed": "x"}}}},
    "not JSON": "{\"results\": {",
    "empty file": "",
    "random bytes": bytes(range(256)),
}


# Odd but readable: need not be reported, must not stop the loader or spoil the other files.
ODD = {
    "config protocol values are tables": {"config": {"regions": {"a": 1}, "k": [16]},
                                          "results": {"math": {"amortized": {"r2": 0.5}}}},
    "n_failed is a table": {"results": {"math": {"amortized": {"r2": 0.5, "n_failed": {}}}}},
    "method_settings is a list": {"config": {"method_settings": [1]}, "results": {"math": {"amortized": {"r2": 0.5}}}},
    "metric is null or infinite": '{"results": {"math": {"amortized": {"r2": null, "lds": Infinity}}}}',
    "no results at all": {"results": {}},
    "another JSON (an estimator)": {"weights": [1, 2]},
}


def _write(path: Path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")


@pytest.mark.parametrize("shape", list(MALFORMED))
def test_leaderboard_loader_survives_each_malformed_shape(shape, tmp_path):
    from vattr_bench.leaderboard import load_results
    from vattr_bench.metrics.registry import METRICS

    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    _write(tmp_path / "good" / "results.json", GOOD)
    bad = tmp_path / "bad" / "results.json"
    _write(bad, MALFORMED[shape])
    table, problems = load_results([tmp_path])  # never raises
    good_rows = table[table["file"] == str(tmp_path / "good" / "results.json")]
    assert list(good_rows["method"]) == ["amortized"] and float(good_rows["r2"].iloc[0]) == 0.5
    named = [p for p in problems if str(bad) in p]
    assert len(named) == 1, problems  # the malformed file is reported, once, by its path
    assert not any(str(tmp_path / "good") in p for p in problems)
    for metric in METRICS:  # whatever is kept of a malformed file is a number or missing, never text
        for value in table[metric]:
            assert value is None or isinstance(value, (int, float)), (metric, value)


@pytest.mark.parametrize("shape", list(ODD))
def test_leaderboard_loader_reads_odd_files_without_harm(shape, tmp_path):
    from vattr_bench.leaderboard import load_results
    from vattr_bench.metrics.registry import METRICS

    _write(tmp_path / "results.json", GOOD)
    (tmp_path / "odd").mkdir()
    _write(tmp_path / "odd" / "results.json", ODD[shape])
    table, problems = load_results([tmp_path])
    assert float(table[table["file"] == str(tmp_path / "results.json")]["r2"].iloc[0]) == 0.5
    for metric in METRICS:
        assert all(v is None or isinstance(v, (int, float)) for v in table[metric]), metric


def test_leaderboard_loader_survives_a_folder_named_like_a_results_file(tmp_path):
    from vattr_bench.leaderboard import load_results

    (tmp_path / "results.json").mkdir()
    _write(tmp_path / "ok.json", GOOD)
    table, problems = load_results([tmp_path])
    assert len(table) == 1 and any(str(tmp_path / "results.json") in p for p in problems)


def test_leaderboard_loader_survives_a_damaged_status_file(tmp_path):
    from vattr_bench.leaderboard import load_results

    _write(tmp_path / "results.json", GOOD)
    (tmp_path / "status.json").write_bytes(b"\xff\xfe{not json")
    table, problems = load_results([tmp_path])
    assert len(table) == 1 and table["status"].iloc[0] == ""


# samples.jsonl, fuzzed: records or a clear error naming the file -------------------------------------------

RECORD = {"benchmark": "math", "sample_id": "s0", "method": "amortized", "n_spans": 1, "span_metrics": {"r2": [0.5]}}
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=8)
lines = st.one_of(st.just(json.dumps(RECORD)), json_values.map(json.dumps), st.text(max_size=40),
                  st.just(json.dumps(RECORD)[:25]))


# the shapes met in use, checked on every run; hypothesis explores around them
KNOWN_BAD_FILES = [b"null", b"\x80abc", json.dumps({"results": {"math": {}}}, indent=1).encode(),
                   (json.dumps(RECORD) + "\n" + '{"a": 1}').encode(), (json.dumps(RECORD) + "\n[1, 2]").encode()]


def known_bad(test):
    for content in KNOWN_BAD_FILES:
        test = example(content=content)(test)
    return test


@FUZZ
@known_bad
@given(content=st.one_of(st.lists(lines, max_size=6).map("\n".join).map(str.encode), st.binary(max_size=200)))
def test_fuzzed_samples_jsonl_gives_records_or_a_clear_error(content, tmp_path):
    from vattr_bench.results import read_records

    path = tmp_path / "samples.jsonl"
    path.write_bytes(content)
    try:
        records = read_records(path)
    except ValueError as e:  # the one kind of error allowed, and it names the file
        assert str(path) in str(e), f"{type(e).__name__}: {e}"
        return
    for record in records:
        assert isinstance(record, dict) and {"benchmark", "sample_id", "method"} <= set(record), record


@FUZZ
@known_bad
@given(content=st.one_of(st.lists(lines, max_size=6).map("\n".join).map(str.encode), st.binary(max_size=200)))
def test_fuzzed_samples_jsonl_through_compare_is_one_line(content, tmp_path):
    """What the command line makes of the same files: records it can compare, or a ValueError (a user error:
    one line) naming the file."""
    from vattr_bench.cli import _run_records

    path = tmp_path / "samples.jsonl"
    path.write_bytes(content)
    try:
        records, _ = _run_records(path, ("r2",))
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert all(isinstance(r, dict) and "r2" in r.get("span_metrics", {"r2": 0}) for r in records)


# region protocols, fuzzed on the tiny model: a partition of the visual tokens, or a clear ValueError ------------

def _image(width: int, height: int, kind: str, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    if kind == "constant":
        pixels = np.full((height, width, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    elif kind == "noise":
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif kind == "stripes":
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        pixels[:, ::2] = 255
    else:  # two halves
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        pixels[:, width // 2:] = (255, 0, 0)
    return Image.fromarray(pixels)


sizes = st.one_of(st.tuples(st.integers(1, 300), st.integers(1, 300)),
                  st.sampled_from([(1, 1), (1, 500), (500, 1), (2000, 8), (8, 2000), (8, 8), (7, 64), (4000, 4000)]))


@FUZZ
@given(size=sizes, kind=st.sampled_from(["constant", "noise", "stripes", "halves"]),
       protocol=st.sampled_from(["feature-ward", "grid", "superpixel", "gt-boxes"]),
       k=st.one_of(st.integers(16, 128), st.integers(-3, 300)), seed=st.integers(0, 3))
@example(size=(1, 1), kind="constant", protocol="feature-ward", k=16, seed=0)
@example(size=(2000, 8), kind="stripes", protocol="superpixel", k=128, seed=0)
@example(size=(64, 64), kind="constant", protocol="superpixel", k=128, seed=0)
@example(size=(64, 64), kind="constant", protocol="feature-ward", k=300, seed=0)
@example(size=(64, 64), kind="halves", protocol="gt-boxes", k=16, seed=0)
def test_fuzzed_region_protocols_partition_the_tokens_or_say_why_not(tiny, size, kind, protocol, k, seed):
    from vattr_bench.regions import make_regions

    image = _image(*size, kind, seed)
    try:
        prepared = tiny.prepare(image, "describe the image .")
        regions, _ = make_regions(protocol, tiny, prepared, k=k)
    except ValueError as e:
        message = str(e)
        assert message and ("pixels" in message or f"K={k}" in message or "gt-boxes" in message), message
        return
    tokens = regions.token_matrix
    assert tokens.shape == (regions.k, prepared.n_visual_tokens) and regions.k >= 1
    assert (tokens.sum(axis=0) == 1).all()  # every visual token in exactly one region
    assert tokens.any(axis=1).all()  # no region without a token
    width, height = prepared.image.size
    assert regions.pixel_masks.shape == (regions.k, height, width)
    assert (regions.pixel_masks.sum(axis=0) <= 1).all()  # no pixel in two regions
    assert regions.k <= max(k, 1) or protocol == "gt-boxes"
