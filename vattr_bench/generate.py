"""`vattr-bench generate`: run a model over benchmark samples, write its traces and score its answers."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .benchmarks import resolve_families, synthetic_samples
from .models import VisionLanguageModel
from .models.prompting import is_correct
from .results import read_records
from .storage import write_text_atomically


def generate_traces(model: VisionLanguageModel, benchmark: str, limit: int, output_dir: Path, split: str = "test",
                    seed: int = 0, max_new_tokens: int = 256) -> dict[str, dict]:
    """Write ``output_dir/generations.jsonl`` (one object per sample) and return per-family summaries.
    A killed run resumes like evaluate: the samples already in the file are kept and not generated again,
    as long as the folder's ``generate.json`` says they were made under the same settings."""
    families = resolve_families(benchmark)
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    output_dir.mkdir(parents=True, exist_ok=True)
    marker, path = output_dir / "generate.json", output_dir / "generations.jsonl"
    resumable = marker.is_file()  # generations from before the marker existed: their settings unknown, redone
    _claim(marker, {"model": model.name, "split": split, "seed": seed, "max_new_tokens": max_new_tokens,
                    "dtype": str(getattr(model, "dtype", ""))})
    done = {(r["benchmark"], r["sample_id"]): r for r in read_records(path)} if resumable else {}
    write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in done.values()))  # a torn last line dropped
    summary = {}
    with open(path, "a", encoding="utf-8") as out:
        for family in families:
            correct, steps = [], []
            bar = tqdm(synthetic_samples(family, limit, split=split, seed=seed), desc=f"generate {family}", unit="sample")
            for sample in bar:
                record = done.get((family, sample.id))
                if record is None:
                    trace = model.generate(model.prepare(sample.image, sample.prompt), max_new_tokens=max_new_tokens)
                    record = {
                        "benchmark": family, "sample_id": sample.id, "prompt": sample.prompt, "trace": trace.text,
                        "answer": trace.answer, "reference": sample.reference,
                        "correct": is_correct(trace.answer, sample.reference),
                        "spans": [s.text for s in trace.spans], "n_tokens": len(trace.token_ids),
                        "n_thinking_steps": trace.n_thinking_steps,
                    }
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                correct.append(bool(record["correct"]))
                steps.append(record["n_thinking_steps"])
                bar.set_postfix(acc=f"{sum(correct) / len(correct):.3f}")
            summary[family] = {"accuracy": sum(correct) / len(correct), "n_samples": len(correct),
                               "mean_thinking_steps": sum(steps) / len(steps)}
    return summary


def _claim(marker: Path, settings: dict) -> None:
    """A folder holds the generations of one set of settings: a resumed run must use the same."""
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous != settings:
            raise ValueError(f"{marker.parent} holds generations made under {previous}, not {settings}; "
                             "use a new --output-dir")
    else:
        write_text_atomically(marker, json.dumps(settings, indent=1))


def format_summary(summary: dict[str, dict]) -> str:
    lines = [f"{'benchmark':<10} {'accuracy':>9} {'steps/trace':>12} {'n':>5}"]
    for family, s in summary.items():
        lines.append(f"{family:<10} {s['accuracy']:>9.3f} {s['mean_thinking_steps']:>12.2f} {s['n_samples']:>5}")
    return "\n".join(lines)
