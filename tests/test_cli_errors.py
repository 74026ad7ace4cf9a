"""Every user mistake the command line can meet ends in one line naming the file or flag, exit code 2;
--debug shows the traceback instead. None of these loads a model unless it has to (fast)."""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from vattr_bench.cli import main
from vattr_bench.errors import UserError, describe

ONE_LINE_PREFIX = "vattr-bench {}: error: "


def run_cli(argv, capsys) -> str:
    """The command's stderr, checked to be exactly one error line of exit code 2, without a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(ONE_LINE_PREFIX.format(argv[0] if not argv[0].startswith("-") else argv[1]))
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A small evaluate run folder, as evaluate writes it (two methods, two samples, one benchmark)."""
    folder = tmp_path / "run"
    folder.mkdir()
    records = []
    for sample in ("s0", "s1"):
        for method, r2 in (("amortized", [0.5, 0.4]), ("attention", [0.2, 0.1])):
            records.append({"benchmark": "math", "sample_id": sample, "method": method, "n_spans": 2,
                            "span_metrics": {"r2": r2, "lds": [0.1, 0.2]}})
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


# --output-dir ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["evaluate", "--method", "random"], ["generate"]])
def test_output_dir_that_is_a_file(command, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    line = run_cli(command + ["--benchmark", "math", "--limit", "1", "--output-dir", str(target)], capsys)
    assert f"--output-dir {target} is a file, not a folder" in line


@pytest.mark.parametrize("command", [["evaluate", "--method", "random"], ["generate"]])
def test_output_dir_below_a_file(command, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "sub" / "run"
    line = run_cli(command + ["--benchmark", "math", "--limit", "1", "--output-dir", str(target)], capsys)
    assert f"{tmp_path / 'afile'} is a file, not a folder" in line and "--output-dir" in line
    assert not (tmp_path / "afile").is_dir()


def test_output_dir_read_only(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root writes anywhere: stand in for a filesystem that refuses
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    line = run_cli(["evaluate", "--method", "random", "--benchmark", "math", "--limit", "1",
                    "--output-dir", str(locked / "run")], capsys)
    assert f"--output-dir {locked / 'run'}: cannot write in {locked}" in line
    assert not (locked / "run").exists()


def test_an_os_error_deep_inside_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """What the early checks cannot foresee (a disk that turns read-only mid-run) is still one line."""
    import vattr_bench.cli as cli

    def refused(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "results.json"))

    monkeypatch.setattr(cli, "_cmd_list", refused)  # build_parser reads the name when main calls it
    line = run_cli(["list"], capsys)
    assert line.endswith(f"{tmp_path / 'run' / 'results.json'}: permission denied")


@pytest.mark.parametrize("flag", ["--save-png"])
def test_regions_png_path_that_is_a_folder(flag, tmp_path, capsys):
    line = run_cli(["regions", flag, str(tmp_path)], capsys)
    assert f"{flag} {tmp_path} is a folder; give a file name" in line


def test_stream_png_below_a_file_fails_before_the_model_runs(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    line = run_cli(["stream", "--image", str(tmp_path / "missing.png"), "--prompt", "x",
                    "--save-png", str(tmp_path / "afile" / "out.png")], capsys)
    assert "--save-png" in line and f"{tmp_path / 'afile'} is a file, not a folder" in line


# --debug ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path):
    (tmp_path / "afile").write_text("x")
    argv = ["evaluate", "--method", "random", "--output-dir", str(tmp_path / "afile")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(UserError, match="is a file, not a folder"):
        main(argv)


def test_a_bug_is_not_dressed_as_a_user_error():
    assert describe(KeyError("benchmark")) is None and describe(AttributeError("x")) is None
    assert describe(TypeError("x")) is None


# method plugins ----------------------------------------------------------------------------------------------

def test_plugin_whose_init_needs_an_argument(tmp_path, capsys):
    plugin = tmp_path / "needy.py"
    plugin.write_text("class Needy:\n    name = 'needy'\n    def __init__(self, scale):\n        self.scale = scale\n"
                      "    def attribute(self, ctx):\n        raise NotImplementedError\n")
    line = run_cli(["evaluate", "--method", f"{plugin}:Needy", "--benchmark", "math", "--limit", "1",
                    "--output-dir", str(tmp_path / "out")], capsys)
    assert "Needy() needs arguments" in line and "scale" in line and str(plugin) in line
    assert not (tmp_path / "out").exists()


def test_plugin_whose_init_fails(tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text("class Broken:\n    def __init__(self):\n        raise RuntimeError('no licence file')\n"
                      "    def attribute(self, ctx):\n        return None\n")
    line = run_cli(["evaluate", "--method", f"{plugin}:Broken", "--benchmark", "math", "--limit", "1",
                    "--output-dir", str(tmp_path / "out")], capsys)
    assert "Broken() failed: RuntimeError: no licence file" in line


def test_unknown_method_is_said_once(tmp_path, capsys):
    line = run_cli(["evaluate", "--method", "nosuch", "--benchmark", "math", "--limit", "1",
                    "--output-dir", str(tmp_path / "out")], capsys)
    assert line.count("unknown method 'nosuch'") == 1


# compare -----------------------------------------------------------------------------------------------------

def test_compare_reads_a_good_run(run_dir, capsys):
    assert main(["compare", str(run_dir), "--metric", "r2"]) == 0
    assert "| math | attention | +0.300" in capsys.readouterr().out


def test_compare_on_a_results_json(run_dir, capsys):
    results = run_dir / "results.json"
    results.write_text(json.dumps({"schema_version": 2, "results": {"math": {"amortized": {"r2": 0.5}}}}, indent=1))
    line = run_cli(["compare", str(results)], capsys)
    assert f"{results} is not an evaluate run's samples.jsonl" in line


def test_compare_on_random_bytes_names_the_file(tmp_path, capsys):
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(128, 256)) * 8)
    line = run_cli(["compare", str(noise)], capsys)
    assert str(noise) in line and "not UTF-8" in line


@pytest.mark.parametrize("bad_line", ['{"a": 1}', '[1, 2]', '"text"'])
def test_compare_skips_a_line_that_is_no_record_and_says_so(bad_line, run_dir, capsys, caplog):
    """A valid-JSON last line without a record's fields (edited, or another tool's): skipped with a warning
    naming the file and line (results.read_records), never a KeyError."""
    samples = run_dir / "samples.jsonl"
    samples.write_text(samples.read_text() + bad_line + "\n")
    assert main(["compare", str(run_dir), "--metric", "r2"]) == 0
    assert "| math | attention | +0.300" in capsys.readouterr().out
    assert f"{samples} line 5 is not a record" in caplog.text


@pytest.mark.parametrize("bad_line", ['{"benchmark": "math", "sample_id": "s0", "method": "amortized"}',
                                      '{"benchmark": "math", "sample_id": "s0", "method": "amortized", '
                                      '"span_metrics": {"lds": [0.1]}}'])
def test_compare_on_a_record_without_its_metrics(bad_line, run_dir, capsys):
    samples = run_dir / "samples.jsonl"
    samples.write_text(samples.read_text() + bad_line + "\n")
    line = run_cli(["compare", str(run_dir), "--metric", "r2"], capsys)
    assert f"{samples} is not an evaluate run's samples.jsonl" in line and "record 5" in line and "lacks span_metrics" in line


def test_compare_on_a_corrupt_run_marker(run_dir, capsys):
    other = run_dir.parent / "other"
    shutil.copytree(run_dir, other)
    (run_dir / "run.json").write_bytes(b"\x00\xff garbage")
    line = run_cli(["compare", str(run_dir), "--against", str(other)], capsys)
    assert str(run_dir / "run.json") in line


# models ------------------------------------------------------------------------------------------------------

def test_a_hub_id_fails_within_seconds_when_the_hub_cannot_be_reached(tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE unset and no network: one short probe, then the local cache only — not a minute of
    huggingface_hub's retries — and the message says how to download the model."""
    import huggingface_hub.constants as hub

    import vattr_bench.models as models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")  # a name that never resolves (RFC 2606)
    monkeypatch.setattr(models, "HUB_PROBE_TIMEOUT_S", 1.0)
    line = run_cli(["generate", "--model", "nobody/nothing", "--limit", "1", "--output-dir", str(tmp_path)], capsys)
    assert "did not answer within 1 s" in line and "hf download nobody/nothing" in line
    start = time.perf_counter()  # the hub part alone (the command's own time is mostly importing torch)
    with pytest.raises(UserError):
        models._hub_source("nobody/nothing")
    assert time.perf_counter() - start < 10  # huggingface_hub's retries alone sleep 23 s


def test_a_cached_hub_id_loads_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    import vattr_bench.models as models

    snapshot = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(models.TINY_CHECKPOINT, snapshot)
    (tmp_path / "hub" / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(models, "HUB_PROBE_TIMEOUT_S", 1.0)
    assert models._hub_source("someone/tiny") == str(snapshot)
    model = models.load_model("someone/tiny")
    assert model.name == "someone/tiny"
