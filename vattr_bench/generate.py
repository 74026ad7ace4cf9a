"""`vattr-bench generate`: run a model over benchmark samples, write its traces and score its answers."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .benchmarks import resolve_families, synthetic_samples
from .models import VisionLanguageModel
from .models.prompting import is_correct


def generate_traces(model: VisionLanguageModel, benchmark: str, limit: int, output_dir: Path, split: str = "test",
                    seed: int = 0, max_new_tokens: int = 256) -> dict[str, dict]:
    """Write ``output_dir/generations.jsonl`` (one object per sample) and return per-family summaries."""
    families = resolve_families(benchmark)
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    with open(output_dir / "generations.jsonl", "w", encoding="utf-8") as out:
        for family in families:
            correct, steps = [], []
            bar = tqdm(synthetic_samples(family, limit, split=split, seed=seed), desc=f"generate {family}", unit="sample")
            for sample in bar:
                trace = model.generate(model.prepare(sample.image, sample.prompt), max_new_tokens=max_new_tokens)
                ok = is_correct(trace.answer, sample.reference)
                record = {
                    "benchmark": family, "sample_id": sample.id, "prompt": sample.prompt, "trace": trace.text,
                    "answer": trace.answer, "reference": sample.reference, "correct": ok,
                    "spans": [s.text for s in trace.spans], "n_tokens": len(trace.token_ids),
                    "n_thinking_steps": trace.n_thinking_steps,
                }
                out.write(json.dumps(record) + "\n")
                out.flush()
                correct.append(bool(ok))
                steps.append(trace.n_thinking_steps)
                bar.set_postfix(acc=f"{sum(correct) / len(correct):.3f}")
            summary[family] = {"accuracy": sum(correct) / len(correct), "n_samples": len(correct),
                               "mean_thinking_steps": sum(steps) / len(steps)}
    return summary


def format_summary(summary: dict[str, dict]) -> str:
    lines = [f"{'benchmark':<10} {'accuracy':>9} {'steps/trace':>12} {'n':>5}"]
    for family, s in summary.items():
        lines.append(f"{family:<10} {s['accuracy']:>9.3f} {s['mean_thinking_steps']:>12.2f} {s['n_samples']:>5}")
    return "\n".join(lines)
