"""Results schema: per-(sample, method) records in ``samples.jsonl`` and their aggregate ``results.json``.

The layout follows lm-eval's results / log_samples habits: one JSON with the run's configuration and
per-benchmark, per-method numbers, and one JSONL line per sample for everything behind them.
"""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from .metrics import HIGHER_IS_BETTER

SCHEMA_VERSION = 1
SPAN_METRICS = ("r2", "pearson", "lds", "deletion_auc", "insertion_auc", "topk_drop", "pointing_game")
COST_METRICS = ("sec_per_token", "peak_mem_mb")


def read_records(path: Path) -> list[dict]:
    """Records of a samples.jsonl; a line cut short by a killed run is skipped, not fatal."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def aggregate(records: list[dict]) -> dict:
    """{benchmark: {method: metrics}}: span metrics averaged over all spans (NaN excluded), cost
    metrics over samples; failed records are counted under ``n_failed``."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        grouped.setdefault((r["benchmark"], r["method"]), []).append(r)
    out: dict = {}
    for (benchmark, method), recs in sorted(grouped.items()):
        ok = [r for r in recs if "error" not in r]
        entry = {}
        for m in SPAN_METRICS:
            values = np.array([v for r in ok for v in r["span_metrics"][m]], dtype=np.float64)
            entry[m] = _mean(values)
        for m in COST_METRICS:
            entry[m] = _mean(np.array([r[m] for r in ok], dtype=np.float64))
        entry["n_samples"] = len(ok)
        entry["n_spans"] = int(sum(r["n_spans"] for r in ok))
        if len(ok) < len(recs):
            entry["n_failed"] = len(recs) - len(ok)
        out.setdefault(benchmark, {})[method] = entry
    return out


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def build_results(model: str, config: dict, records: list[dict]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "config": config,
        "versions": _versions(),
        "git_hash": _git_hash(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "higher_is_better": HIGHER_IS_BETTER,
        "results": aggregate(records),
    }


def format_table(results: dict) -> str:
    import pandas as pd

    rows = [{"benchmark": b, "method": m, **{k: v for k, v in metrics.items()}}
            for b, methods in results["results"].items() for m, metrics in methods.items()]
    if not rows:
        return "(no results)"
    frame = pd.DataFrame(rows).set_index(["benchmark", "method"])
    return frame.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")


def _versions() -> dict:
    out = {}
    for pkg in ("vattr-bench", "torch", "transformers", "captum", "numpy", "scikit-image", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _git_hash() -> str | None:
    """HEAD, with "-dirty" when tracked files differ from it (the numbers then came from code or a
    checkpoint that no commit holds)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=5).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return head + ("-dirty" if head and git("status", "--porcelain", "--untracked-files=no") else "") or None
    except (OSError, subprocess.SubprocessError):
        return None
