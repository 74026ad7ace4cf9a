"""`vattr-bench generate`: run a model over benchmark samples, write its traces and score its answers."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .benchmarks import resolve_families, synthetic_samples
from .distributed import Ranks, merge_shards, read_all_records
from .models import VisionLanguageModel
from .models.prompting import is_correct
from .results import read_records
from .storage import claim_settings, write_text_atomically

GENERATION_KEYS = {"benchmark", "sample_id"}  # a line of generations.jsonl


def generate_traces(model: VisionLanguageModel, benchmark: str, limit: int, output_dir: Path, split: str = "test",
                    seed: int = 0, max_new_tokens: int = 256, ranks: Ranks = Ranks()) -> dict[str, dict]:
    """Write ``output_dir/generations.jsonl`` (one object per sample) and return per-family summaries.
    A killed run resumes like evaluate: the samples already in the file are kept and not generated again,
    as long as the folder's ``generate.json`` says they were made under the same settings. Under a distributed
    launch each rank generates its share into a shard, and rank 0 merges them and returns the summaries (the
    other ranks return {})."""
    families = resolve_families(benchmark)
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    marker, path = output_dir / "generate.json", output_dir / "generations.jsonl"
    resumable = marker.is_file()  # generations from before the marker existed: their settings unknown, redone
    settings = {"model": model.name, "split": split, "seed": seed, "max_new_tokens": max_new_tokens,
                "dtype": str(getattr(model, "dtype", ""))}
    ranks.on_main(lambda: claim_settings(marker, settings, "generations"), str(output_dir))  # on rank 0
    done = {(r["benchmark"], r["sample_id"]): r for r in read_all_records(path, GENERATION_KEYS)} if resumable else {}
    sink_path = ranks.shard_path(path)
    sink_path.parent.mkdir(parents=True, exist_ok=True)
    # a torn last line dropped: the single file keeps what is done, a rank's shard its own records
    kept = done.values() if not ranks.distributed else (read_records(sink_path, GENERATION_KEYS) if resumable else [])
    write_text_atomically(sink_path, "".join(json.dumps(r) + "\n" for r in kept))
    samples = {family: synthetic_samples(family, limit, split=split, seed=seed) for family in families}
    with open(sink_path, "a", encoding="utf-8") as out:
        for family in families:
            bar = tqdm(ranks.shard(samples[family]), desc=f"generate {family}" + (
                f" [rank {ranks.rank}]" if ranks.distributed else ""), unit="sample")
            for sample in bar:
                if (family, sample.id) in done:
                    continue
                trace = model.generate(model.prepare(sample.image, sample.prompt), max_new_tokens=max_new_tokens)
                out.write(json.dumps({
                    "benchmark": family, "sample_id": sample.id, "prompt": sample.prompt, "trace": trace.text,
                    "answer": trace.answer, "reference": sample.reference,
                    "correct": is_correct(trace.answer, sample.reference),
                    "spans": [s.text for s in trace.spans], "n_tokens": len(trace.token_ids),
                    "n_thinking_steps": trace.n_thinking_steps, "rank": ranks.rank,
                }) + "\n")
                out.flush()
    ranks.barrier()
    if not ranks.is_main:
        return {}
    records = merge_shards(path, GENERATION_KEYS) if ranks.distributed else read_records(path, GENERATION_KEYS)
    by_id = {(r["benchmark"], r["sample_id"]): r for r in records}
    summary = {}
    for family in families:
        mine = [by_id[(family, s.id)] for s in samples[family]]
        summary[family] = {"accuracy": sum(bool(r["correct"]) for r in mine) / len(mine), "n_samples": len(mine),
                           "mean_thinking_steps": sum(r["n_thinking_steps"] for r in mine) / len(mine)}
    return summary


def format_summary(summary: dict[str, dict]) -> str:
    lines = [f"{'benchmark':<10} {'accuracy':>9} {'steps/trace':>12} {'n':>5}"]
    for family, s in summary.items():
        lines.append(f"{family:<10} {s['accuracy']:>9.3f} {s['mean_thinking_steps']:>12.2f} {s['n_samples']:>5}")
    return "\n".join(lines)
