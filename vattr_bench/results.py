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
BOOTSTRAP_RESAMPLES = 2000


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
    """{benchmark: {method: metrics}}: span metrics averaged over all spans (NaN excluded), with a 95%
    interval under ``ci95`` (`span_mean_ci`); cost metrics over samples; failed records are counted under
    ``n_failed``."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        grouped.setdefault((r["benchmark"], r["method"]), []).append(r)
    out: dict = {}
    for (benchmark, method), recs in sorted(grouped.items()):
        ok = [r for r in recs if "error" not in r]
        entry, intervals = {}, {}
        for m in SPAN_METRICS:
            per_sample = [_finite(r["span_metrics"][m]) for r in ok]
            entry[m] = _mean(np.concatenate(per_sample) if per_sample else np.zeros(0))
            intervals[m] = span_mean_ci(per_sample)
        entry["ci95"] = intervals
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


def _finite(values) -> np.ndarray:
    values = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return values[np.isfinite(values)]


def span_mean_ci(per_sample: list[np.ndarray], seed: int = 0) -> list[float] | None:
    """95% interval of the mean over all spans, by a bootstrap over samples (a sample's spans share its
    image and trace, so they are resampled together; scipy's percentile bootstrap, seeded, so a results.json
    is reproducible). None with fewer than two samples that have a finite value."""
    from scipy.stats import bootstrap

    per_sample = [v for v in per_sample if len(v)]
    if len(per_sample) < 2:
        return None
    sums = np.array([v.sum() for v in per_sample])
    counts = np.array([len(v) for v in per_sample], dtype=np.float64)
    if np.ptp(np.concatenate(per_sample)) == 0:  # every span the same value (ablation's r2): no spread to resample
        return [float(per_sample[0][0])] * 2
    result = bootstrap((sums, counts), lambda total, n, axis=-1: total.sum(axis) / n.sum(axis), paired=True,
                       vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                       rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def paired_differences(records: list[dict], method: str, metrics=("r2", "lds"), seed: int = 0) -> list[dict]:
    """``method`` against every other method of the same run, per benchmark and metric: the mean over spans
    of (method − other), on the spans both scored (same samples, same traces), with its 95% interval
    (`span_mean_ci`, samples resampled together) — whether a gap between two table rows is more than
    which samples were drawn. Rows: benchmark, other, metric, difference, ci95, n_samples, n_spans."""
    scored = {(r["benchmark"], r["sample_id"], r["method"]): r for r in records if "error" not in r}
    rows = []
    for benchmark in sorted({b for b, _, m in scored if m == method}):
        others = sorted({m for b, _, m in scored if b == benchmark and m != method})
        mine = {sid: r for (b, sid, m), r in scored.items() if b == benchmark and m == method}
        for other in others:
            for metric in metrics:
                per_sample = []
                for sid, r in mine.items():
                    theirs = scored.get((benchmark, sid, other))
                    if theirs is None:
                        continue
                    a = np.array([np.nan if v is None else v for v in r["span_metrics"][metric]], dtype=np.float64)
                    b = np.array([np.nan if v is None else v for v in theirs["span_metrics"][metric]], dtype=np.float64)
                    if len(a) == len(b):  # the same trace's spans
                        diff = a - b
                        per_sample.append(diff[np.isfinite(diff)])
                spans = np.concatenate(per_sample) if per_sample else np.zeros(0)
                rows.append({"benchmark": benchmark, "other": other, "metric": metric, "difference": _mean(spans),
                             "ci95": span_mean_ci(per_sample, seed), "n_samples": sum(len(v) > 0 for v in per_sample),
                             "n_spans": int(len(spans))})
    return rows


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

    rows = [{"benchmark": b, "method": m, **{k: v for k, v in metrics.items() if k != "ci95"}}
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
