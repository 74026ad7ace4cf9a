"""Data-parallel evaluate: 2 ranks on CPU (gloo, loopback) give the single-process result; a killed rank's shard
is resumed, never scored twice."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vattr_bench.distributed import Ranks, read_all_records
from vattr_bench.evaluate import EvalConfig, evaluate
from vattr_bench.results import read_records

pytestmark = pytest.mark.slow

ARGS = ["--method", "attention,random,ablation,uniform", "--benchmark", "math", "--limit", "4", "--regions", "grid",
        "--n-subsets", "6"]


def _launch(out, nproc=2):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "vattr_bench.cli", "evaluate", *ARGS, "--output-dir", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def _by_key(path):
    return {(r["benchmark"], r["sample_id"], r["method"]): r for r in read_records(path)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dp")
    single = evaluate(EvalConfig(methods=ARGS[1].split(","), benchmark="math", limit=4, regions="grid",
                                 n_subsets=6, output_dir=str(base / "one")))
    return base, single, _launch(base / "two")


def test_two_ranks_equal_one(runs):
    base, single, merged = runs
    one, two = _by_key(base / "one" / "samples.jsonl"), _by_key(base / "two" / "samples.jsonl")
    assert set(one) == set(two) and len(two) == 16  # 4 samples × 4 methods, each once
    assert {r["rank"] for r in two.values()} == {0, 1}
    for key, record in one.items():
        for metric, values in record["span_metrics"].items():
            np.testing.assert_allclose(np.array(two[key]["span_metrics"][metric], dtype=float),
                                       np.array(values, dtype=float), atol=1e-6, err_msg=str((key, metric)))
    assert merged["config"]["world_size"] == 2 and single["config"]["world_size"] == 1
    for bench, methods in single["results"].items():
        for method, entry in methods.items():
            assert merged["results"][bench][method]["r2_signed"] == pytest.approx(entry["r2_signed"], abs=1e-6)
    assert not (base / "two" / "shards").exists()  # merged and cleaned up


def test_a_killed_ranks_shard_is_resumed_not_rescored(runs):
    base, _, _ = runs
    out = base / "two"
    records = read_records(out / "samples.jsonl")
    # as if rank 1 had been killed before the merge: part of its records only in its shard, the rest not done
    kept, shard, lost = records[:6], records[6:11], records[11:]
    (out / "shards").mkdir()
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / "shards" / "samples.rank1.jsonl").write_text(
        "".join(json.dumps({**r, "resumed": True}) + "\n" for r in shard) + '{"torn": ')
    assert len(read_all_records(out / "samples.jsonl")) == 11
    _launch(out)
    after = read_records(out / "samples.jsonl")
    keys = [(r["benchmark"], r["sample_id"], r["method"]) for r in after]
    assert len(keys) == len(set(keys)) == len(records)  # nothing twice, nothing missing
    assert sum(bool(r.get("resumed")) for r in after) == len(shard)  # the shard's records were kept, not redone
    lost_keys = {(r["benchmark"], r["sample_id"], r["method"]) for r in lost}
    assert lost_keys <= set(keys)


def test_ranks_shard_and_place_devices(monkeypatch):
    ranks = Ranks(rank=1, world_size=3, local_rank=1)
    assert ranks.shard(list(range(8))) == [1, 4, 7]
    assert ranks.device("cuda") == "cuda:1" and ranks.device("cpu") == "cpu" and ranks.device("cuda:0") == "cuda:0"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Ranks.from_env() == Ranks()


def _torchrun(*args, nproc=2):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "vattr_bench.cli", *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_generate_and_estimator_collection_shard_over_ranks(tmp_path):
    from vattr_bench.cli import main

    assert main(["generate", "--benchmark", "math,code", "--limit", "3", "--output-dir", str(tmp_path / "one")]) == 0
    printed = _torchrun("generate", "--benchmark", "math,code", "--limit", "3", "--output-dir", str(tmp_path / "two"))
    one, two = (_by_key_generations(tmp_path / d / "generations.jsonl") for d in ("one", "two"))
    assert set(one) == set(two) and len(two) == 6
    assert all(one[k]["trace"] == two[k]["trace"] for k in one) and {r["rank"] for r in two.values()} == {0, 1}
    assert printed.count("accuracy") == 1  # rank 0 alone reports
    # train-estimator: the ranks share the collection through the cache, rank 0 fits
    _torchrun("train-estimator", "--benchmark", "math", "--n-train", "4", "--features", "attention",
              "--n-subsets", "4", "--output", str(tmp_path / "est.json"), "--cache-dir", str(tmp_path / "examples"))
    assert len(list((tmp_path / "examples").glob("*.npz"))) == 4
    meta = json.loads((tmp_path / "est.json").read_text())["meta"]
    assert meta["n_train"] + meta["n_heldout"] == 4


def _by_key_generations(path):
    from vattr_bench.generate import GENERATION_KEYS

    return {(r["benchmark"], r["sample_id"]): r for r in read_records(path, GENERATION_KEYS)}


def test_accelerate_launch_runs_the_same_sharding(tmp_path):
    import shutil

    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    if launcher is None:
        pytest.skip("accelerate is not installed (pip install -e '.[big-models]')")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                           "-m", "vattr_bench.cli", "evaluate", "--method", "attention,random", "--benchmark", "math",
                           "--limit", "2", "--regions", "grid", "--n-subsets", "4", "--output-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["config"]["world_size"] == 2
    assert {r["rank"] for r in read_records(tmp_path / "samples.jsonl")} == {0, 1}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
