import json

import pytest

from vattr_bench.cli import main
from vattr_bench.images import load_image


def test_list_names_families_and_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("math", "science", "document", "code", "general", "vattr-tiny", "Qwen/Qwen3-VL-8B-Thinking"):
        assert name in out


def test_generate_writes_scored_traces(tmp_path, capsys, monkeypatch):
    assert main(["generate", "--model", "vattr-tiny", "--benchmark", "math,code", "--limit", "3",
                 "--output-dir", str(tmp_path), "--max-new-tokens", "64"]) == 0
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [r["benchmark"] for r in records] == ["math"] * 3 + ["code"] * 3
    for r in records:
        assert {"benchmark", "sample_id", "prompt", "trace", "answer", "reference", "correct"} <= set(r)
        assert r["trace"].startswith("<think>") and r["correct"] == (r["answer"] == r["reference"])
    table = capsys.readouterr().out
    assert "accuracy" in table and "math" in table and "code" in table
    # killed after the first math sample, mid-write of the second: the rerun keeps the first, redoes the rest
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    (tmp_path / "generations.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    from vattr_bench.models.hf import HFVisionLanguageModel

    calls, real = [], HFVisionLanguageModel.generate
    monkeypatch.setattr(HFVisionLanguageModel, "generate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    assert main(["generate", "--model", "vattr-tiny", "--benchmark", "math,code", "--limit", "3",
                 "--output-dir", str(tmp_path), "--max-new-tokens", "64"]) == 0
    assert len(calls) == 5 and (tmp_path / "generations.jsonl").read_text().splitlines() == lines
    capsys.readouterr()
    assert main(["generate", "--model", "vattr-tiny", "--benchmark", "math", "--limit", "3",
                 "--output-dir", str(tmp_path), "--max-new-tokens", "32"]) == 2
    assert "holds generations made under" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--benchmark", "chemistry", "--limit", "1"], "unknown benchmark 'chemistry'"),
    (["generate", "--model", "nobody/nothing", "--limit", "1"], "cannot load model 'nobody/nothing'"),
    (["generate", "--limit", "0"], "--limit must be at least 1"),
    (["generate", "--limit", "1", "--device", "gpu0"], "--device 'gpu0' is not a device torch knows"),
    (["evaluate", "--method", "random", "--limit", "1", "--device", "cuda:7"], "--device 'cuda:7': no cuda:7 device"),
    (["generate", "--limit", "1", "--dtype", "float8"], "--dtype 'float8': choose from float32, bfloat16, float16"),
])
def test_cli_errors_are_clear(argv, message, tmp_path, capsys):
    assert main(argv + ["--output-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_leaderboard_refuses_a_missing_device_before_launching(capsys, monkeypatch):
    import vattr_bench.leaderboard

    def launched(*args, **kwargs):
        raise AssertionError("the app was built: the device was not checked first")

    monkeypatch.setattr(vattr_bench.leaderboard, "build_app", launched)
    assert main(["leaderboard", "--device", "cuda:7"]) == 2  # would otherwise fail at the demo's first use
    assert "--device 'cuda:7': no cuda:7 device" in capsys.readouterr().err


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_regions_command_draws_the_regions(tmp_path, capsys):
    png = tmp_path / "regions.png"
    assert main(["regions", "--benchmark", "general", "--index", "0", "--regions", "feature-ward", "--k", "16",
                 "--save-png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "16 feature-ward regions over 64 visual tokens" in out and png.stat().st_size > 1000
    assert main(["regions", "--regions", "grid", "--k", "128"]) == 0
    assert "K=128 clamped to 64" in capsys.readouterr().out


def test_evaluate_splits_its_method_list_between_methods_not_inside_arguments(tmp_path, monkeypatch):
    import vattr_bench.evaluate as evaluate_module

    seen = []
    monkeypatch.setattr(evaluate_module, "evaluate", lambda cfg: seen.append(cfg.methods))
    assert main(["evaluate", "--method", "attention,amortized:estimator=E.json,heads=16,random",
                 "--output-dir", str(tmp_path)]) == 0
    assert seen == [["attention", "amortized:estimator=E.json,heads=16", "random"]]


def test_shared_flags_list_their_choices_in_every_command(capsys):
    from vattr_bench.cli import build_parser
    from vattr_bench.regions import OPERATORS, PROTOCOLS

    commands = {"evaluate": ["--method", "random"], "regions": [], "train-estimator": ["--output", "e.json"],
                "stream": ["--image", "i.png", "--prompt", "p"], "perf": [], "trajectory": []}
    for command, required in commands.items():
        parsed = build_parser().parse_args([command, *required])
        assert (parsed.model, parsed.k) == ("vattr-tiny", 16)  # the same defaults everywhere
        for flag, choices in (("--regions", PROTOCOLS), ("--ablation", OPERATORS)):
            if not hasattr(parsed, flag[2:]):
                continue
            with pytest.raises(SystemExit) as refused:
                build_parser().parse_args([command, *required, flag, "nonsense"])
            assert refused.value.code == 2
            err = capsys.readouterr().err
            assert f"argument {flag}: invalid choice: 'nonsense'" in err and all(c in err for c in choices)


def test_train_model_passes_its_options_through(monkeypatch):
    from vattr_bench.cli import main
    from vattr_bench.models.tiny import train

    seen = []
    monkeypatch.setattr(train, "main", lambda argv: seen.append(list(argv)) or 0)
    assert main(["train-model", "--steps", "3", "--output", "x"]) == 0
    assert seen == [["--steps", "3", "--output", "x"]]
    with pytest.raises(SystemExit):
        main(["list", "--nonsense"])
