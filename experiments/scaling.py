"""Data-parallel evaluate: samples/s on 1 and 2 ranks (measured here, CPU + gloo), and what N GPUs × M nodes would
take for the paper's setting (simulated from per-sample costs).

    python experiments/scaling.py --benchmark math,code --limit 6

Part 1 runs the same `vattr-bench evaluate` twice in fresh folders, once as one process and once under
`torchrun --nproc-per-node 2`, and prints samples/s of each (a ratio measured in one run of this script).

Part 2 is a simulation, not a measurement. The shape of the per-sample cost (how much one sample costs against
another: trace length, spans) is taken from part 1's single-process records; its scale for the paper's models is
a FLOP estimate of a teacher-forced pass of an 8B decoder on one GPU (the assumptions are flags and are printed).
A sample costs its greedy trace, K + 32 teacher-forced ablation passes (the ground truth), and the methods; ranks
take every W-th sample (as `vattr_bench.distributed` shards), and a launch ends when its slowest rank does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = "amortized,attention,input_x_gradient,ablation"


def _run(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def measure(benchmark: str, limit: int, folder: Path) -> tuple[dict, list[dict]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    common = ["-m", "vattr_bench.cli", "evaluate", "--method", METHODS, "--benchmark", benchmark, "--limit", str(limit)]
    n_samples = limit * len(benchmark.split(","))
    one = _run([sys.executable, *common, "--output-dir", str(folder / "one")], env)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                *common, "--output-dir", str(folder / "two")], env)
    records = [json.loads(line) for line in (folder / "one" / "samples.jsonl").read_text().splitlines()]
    return {"samples": n_samples, "one_rank_s": one, "two_ranks_s": two}, records


def per_sample_shape(records: list[dict]) -> np.ndarray:
    """Each sample's cost relative to the mean: its methods' seconds plus its ground truth's (the ablation
    record's cost is the single-region passes; the subsets take 32/K as much again)."""
    costs: dict[tuple, float] = {}
    for r in records:
        if "error" in r:
            continue
        seconds = r["sec_per_token"] * r["n_tokens"]
        if r["method"] == "ablation":
            seconds *= 1 + 32 / r["k"]
        costs[(r["benchmark"], r["sample_id"])] = costs.get((r["benchmark"], r["sample_id"]), 0.0) + seconds
    shape = np.array(list(costs.values()))
    return shape / shape.mean()


def sample_seconds(k: int, args) -> float:
    """One sample of the paper's setting on one GPU, from the flags' assumptions."""
    pass_s = 2 * args.params * args.tokens / (args.mfu * args.peak_tflops * 1e12)  # teacher-forced pass
    decode_s = args.trace_tokens * (2 * args.params / (args.bandwidth_tbs * 1e12))  # memory-bound greedy decoding
    ground_truth_s = (k + 32) * pass_s
    methods_s = args.gradient_methods * args.spans * 3 * pass_s + 2 * pass_s  # a backward per span; amortized, attention
    return decode_s + ground_truth_s + methods_s


def simulate(shape: np.ndarray, args) -> list[dict]:
    rng = np.random.default_rng(0)
    n_total = args.models * args.datasets * args.per_dataset
    rows = []
    for k in (16, 128):
        mean_s = sample_seconds(k, args)
        costs = mean_s * rng.choice(shape, size=n_total, replace=True)  # the measured shape, resampled
        for nodes in (1, 2, 4, 8):
            for gpus in (1, 8):
                world = nodes * gpus
                per_rank = [costs[r::world].sum() for r in range(world)]  # every world-th sample, as the code shards
                load_s = args.models * args.datasets * args.load_seconds  # each rank loads each model per data set
                rows.append({"K": k, "nodes": nodes, "gpus_per_node": gpus, "hours": (max(per_rank) + load_s) / 3600,
                             "balance": float(np.mean(per_rank) / max(per_rank))})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="math,code")
    p.add_argument("--limit", type=int, default=6, help="samples per benchmark for the measured part")
    # the simulation's assumptions (the paper's setting: 4 models × 10 data sets; an 8B decoder on one H200)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--datasets", type=int, default=10)
    p.add_argument("--per-dataset", type=int, default=1000)
    p.add_argument("--params", type=float, default=8e9)
    p.add_argument("--tokens", type=int, default=1800, help="prompt (≈1,300 visual tokens) + trace")
    p.add_argument("--trace-tokens", type=int, default=500)
    p.add_argument("--spans", type=int, default=12)
    p.add_argument("--gradient-methods", type=int, default=3, help="baselines with a backward per span")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense, H200")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--bandwidth-tbs", type=float, default=4.8, help="HBM, H200 (bf16 weights: 2 bytes a parameter)")
    p.add_argument("--load-seconds", type=float, default=60.0, help="loading one model on one rank")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        measured, records = measure(args.benchmark, args.limit, Path(tmp))
    print(f"measured on this machine (vattr-tiny, {measured['samples']} samples, methods {METHODS}):")
    print("| ranks | wall s | samples/s |\n|---|---|---|")
    for ranks, key in ((1, "one_rank_s"), (2, "two_ranks_s")):
        print(f"| {ranks} | {measured[key]:.1f} | {measured['samples'] / measured[key]:.3f} |")
    print(f"speed-up 2 ranks / 1: {measured['one_rank_s'] / measured['two_ranks_s']:.2f}× "
          f"(nproc {os.cpu_count()}; each wall time includes loading the model)")
    shape = per_sample_shape(records)
    print(f"\nsimulated: {args.models} models × {args.datasets} data sets × {args.per_dataset} samples; per-sample cost "
          f"shape from the run above (max/mean {shape.max():.2f}); scale: {args.params:.0e}-parameter decoder, "
          f"{args.tokens} tokens a pass at {args.mfu:.0%} of {args.peak_tflops:g} TFLOP/s, {args.trace_tokens}-token "
          f"traces decoded at {args.bandwidth_tbs} TB/s; one sample ≈ {sample_seconds(16, args):.1f} s at K 16, "
          f"{sample_seconds(128, args):.1f} s at K 128")
    print("| K | nodes | GPUs/node | hours | rank balance |\n|---|---|---|---|---|")
    for row in simulate(shape, args):
        print(f"| {row['K']} | {row['nodes']} | {row['gpus_per_node']} | {row['hours']:.1f} | {row['balance']:.2f} |")


if __name__ == "__main__":
    main()
