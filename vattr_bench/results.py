"""Results schema: per-(sample, method) records in ``samples.jsonl`` and their aggregate ``results.json``.

The layout follows lm-eval's results / log_samples habits: one JSON with the run's configuration and
per-benchmark, per-method numbers, and one JSONL line per sample for everything behind them.
"""
from __future__ import annotations

import json
import logging
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from .metrics import COST_METRICS, HIGHER_IS_BETTER, RANKING_METRIC, SPAN_METRICS

# 2: reference / reads_ground_truth, n_spans_scored / n_spans_undefined / n_failed / flags per method,
# r2_signed (ranked by) and r2_partial_size, random subsets per sample
SCHEMA_VERSION = 2
BOOTSTRAP_RESAMPLES = 2000
RECORD_KEYS = {"benchmark", "sample_id", "method"}
_log = logging.getLogger("vattr_bench")
# a method that left more than this share of its spans undefined (flat scores) is flagged
UNDEFINED_FLAG_SHARE = 0.10


def read_records(path: Path, required=RECORD_KEYS) -> list[dict]:
    """Records of a samples.jsonl (or, with ``required`` {benchmark, sample_id}, a generations.jsonl). A line cut
    short by a killed run is skipped; any other line that is not a record (not JSON, or without the ``required``
    keys) is skipped with a warning naming the file and line; a file that is not text is an error naming it."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a samples.jsonl (not UTF-8 text: {e.reason} at byte {e.start})") from None
    records, lines = [], text.splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines) and line.strip():  # the last line may be torn by a kill; others are damage
                _log.warning("%s line %d is not JSON; skipped", path, number)
            continue
        if not isinstance(record, dict) or not set(required) <= set(record):
            _log.warning("%s line %d is not a record (needs %s); skipped", path, number, ", ".join(sorted(required)))
            continue
        records.append(record)
    return records


def aggregate(records: list[dict]) -> dict:
    """{benchmark: {method: metrics}}: span metrics averaged over all spans of the samples the method scored,
    with a 95% interval under ``ci95`` (`span_mean_ci`); a span whose correlation the method's flat scores left
    undefined counts as 0 there (evaluate's scoring), and only spans whose *truth* is flat — the same for every
    method — are left out. Cost metrics over samples. The accounting: ``n_spans_scored``, ``n_spans_undefined``,
    ``n_failed`` (samples), ``reference``, and ``flags`` for anything a reader should not miss."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        grouped.setdefault((r["benchmark"], r["method"]), []).append(r)
    out: dict = {}
    for (benchmark, method), recs in sorted(grouped.items()):
        ok = [r for r in recs if "error" not in r]
        entry, intervals = {}, {}
        for m in SPAN_METRICS:
            per_sample = [_finite(r["span_metrics"].get(m, [])) for r in ok]
            entry[m] = _mean(np.concatenate(per_sample) if per_sample else np.zeros(0))
            intervals[m] = span_mean_ci(per_sample)
        entry["ci95"] = intervals
        for m in COST_METRICS:
            entry[m] = _mean(np.array([r[m] for r in ok], dtype=np.float64))
        scored = int(sum(r["n_spans"] for r in ok))
        undefined = int(sum(len(r.get("undefined_spans", [])) for r in ok))
        entry.update(n_samples=len(ok), n_spans=scored, n_spans_scored=scored, n_spans_undefined=undefined,
                     n_failed=len(recs) - len(ok),
                     reference=any(r.get("reference", False) for r in recs),
                     reads_ground_truth=any(r.get("reads_ground_truth", False) for r in recs))
        flags = []
        if scored and undefined / scored > UNDEFINED_FLAG_SHARE:
            flags.append(f"scores flat (no ranking of regions) on {undefined / scored:.0%} of spans: counted as 0")
        if entry["n_failed"]:
            flags.append(f"failed on {entry['n_failed']} of {len(recs)} samples: its means cover the others only")
        entry["flags"] = flags
        out.setdefault(benchmark, {})[method] = entry
    return out


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _floats(values) -> np.ndarray:
    """A record's per-span values (None where a span has none) as floats, NaN for None."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _finite(values) -> np.ndarray:
    values = _floats(values)
    return values[np.isfinite(values)]


def span_mean_ci(per_sample: list[np.ndarray], seed: int = 0) -> list[float] | None:
    """95% interval of the mean over all spans, by a bootstrap over samples (a sample's spans share its
    image and trace, so they are resampled together; scipy's percentile bootstrap, seeded, so a results.json
    is reproducible). None with fewer than two samples that have a finite value."""
    per_sample = [v for v in per_sample if len(v)]
    return _ratio_of_sums_ci(np.array([v.sum() for v in per_sample]),
                             np.array([len(v) for v in per_sample], dtype=np.float64), seed)


def _ratio_of_sums_ci(numerators: np.ndarray, denominators: np.ndarray, seed: int) -> list[float] | None:
    """95% percentile-bootstrap interval of Σ numerators / Σ denominators, one pair per sample, the samples
    resampled (a mean over spans is Σ span sums / Σ span counts; a ratio of two methods' means over the same
    spans is Σ one's sums / Σ the other's)."""
    from scipy.stats import bootstrap

    if len(numerators) < 2:
        return None
    # a denominator of 0 (a ratio to a method that scored 0 on a sample) gives inf, kept as is
    with np.errstate(divide="ignore", invalid="ignore"):
        per_sample = numerators / denominators
        if np.ptp(per_sample) == 0:  # every sample the same (ablation's r2): no spread to resample
            return [float(per_sample[0])] * 2
        result = bootstrap((numerators, denominators), lambda a, b, axis=-1: a.sum(axis) / b.sum(axis),
                           paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                           rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def paired_differences(records: list[dict], method: str, metrics=("r2", "lds"), seed: int = 0,
                       ratio: bool = False) -> list[dict]:
    """``method`` against every other method of the same records, per benchmark and metric, on the spans
    both scored (same samples, same traces): the mean over those spans of (method − other), or with
    ``ratio`` method's mean ÷ other's (for metrics ≥ 0 such as r2: "2× raw attention" is such a ratio), with
    its 95% interval (samples resampled together) — whether a gap between two table rows is more than which
    samples were drawn. Rows: benchmark, other, metric, statistic ("difference" or "ratio"), value, ci95,
    n_samples, n_spans."""
    scored = {(r["benchmark"], r["sample_id"], r["method"]): r for r in records if "error" not in r}
    # each pairing below keeps only the spans where both methods have a value (the same spans, same traces)
    rows = []
    for benchmark in sorted({b for b, _, m in scored if m == method}):
        others = sorted({m for b, _, m in scored if b == benchmark and m != method})
        mine = {sid: r for (b, sid, m), r in scored.items() if b == benchmark and m == method}
        for other, metric in ((o, m) for o in others for m in metrics):
            sums = []  # per sample: (method's sum, other's sum, spans) over the spans both have a value for
            for sid, r in mine.items():
                theirs = scored.get((benchmark, sid, other))
                if theirs is None or len(theirs["span_metrics"][metric]) != len(r["span_metrics"][metric]):
                    continue  # not scored by both, or not the same trace's spans
                a, b = _finite_pairs(r["span_metrics"][metric], theirs["span_metrics"][metric])
                if len(a):
                    sums.append((a.sum(), b.sum(), len(a)))
            a_sums, b_sums, counts = (np.array(c, dtype=np.float64) for c in zip(*sums)) if sums else [np.zeros(0)] * 3
            if ratio:
                value = float(a_sums.sum() / b_sums.sum()) if sums and b_sums.sum() > 0 else None
                ci = _ratio_of_sums_ci(a_sums, b_sums, seed) if value is not None else None
            else:
                value = float((a_sums - b_sums).sum() / counts.sum()) if sums else None
                ci = _ratio_of_sums_ci(a_sums - b_sums, counts, seed)
            rows.append({"benchmark": benchmark, "other": other, "metric": metric,
                         "statistic": "ratio" if ratio else "difference", "value": value, "ci95": ci,
                         "n_samples": len(sums), "n_spans": int(counts.sum())})
    return rows


def _finite_pairs(mine, theirs) -> tuple[np.ndarray, np.ndarray]:
    """Two methods' values on the spans where both have one."""
    a, b = _floats(mine), _floats(theirs)
    both = np.isfinite(a) & np.isfinite(b)
    return a[both], b[both]


def build_results(model: str, config: dict, records: list[dict]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "config": config,
        "versions": _versions(),
        "git_hash": _git_hash(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "higher_is_better": HIGHER_IS_BETTER,
        "ranking_metric": RANKING_METRIC,
        "results": aggregate(records),
    }


TABLE_COLUMNS = (RANKING_METRIC, "r2", "r2_partial_size", "lds", "pearson", "topk_drop", "pointing_game",
                 "sec_per_token", "n_samples", "n_spans_undefined", "n_failed")


def format_table(results: dict) -> str:
    """The run's table: per benchmark, ranked methods first (by the ranking metric), then the references
    (marked *), with the main columns; results.json has every metric and interval."""
    import pandas as pd

    rows = []
    for benchmark, methods in results["results"].items():
        for method, metrics in methods.items():
            rows.append({"benchmark": benchmark, "method": method + (" *" if metrics.get("reference") else ""),
                         "_reference": bool(metrics.get("reference")),
                         **{k: metrics.get(k) for k in TABLE_COLUMNS}})
    if not rows:
        return "(no results)"
    frame = pd.DataFrame(rows).sort_values(["benchmark", "_reference", RANKING_METRIC],
                                           ascending=[True, True, False], na_position="last")
    frame = frame.drop(columns="_reference").set_index(["benchmark", "method"])
    notes = [f"ranked by {RANKING_METRIC} (sign(r)·r²: pointing the wrong way scores below 0); * a reference or "
             "null baseline, not ranked; spans a method left flat count as 0 (n_spans_undefined)"]
    for benchmark, methods in results["results"].items():
        counts = {m: (v.get("n_samples"), v.get("n_spans_scored", v.get("n_spans"))) for m, v in methods.items()}
        if len(set(counts.values())) > 1:
            notes.append(f"{benchmark}: methods scored different samples (a failure): compare them on the spans "
                         "all scored with `vattr-bench compare`")
        for method, v in methods.items():  # a reference's flags are by design (uniform is flat): results.json has them
            if not v.get("reference"):
                notes.extend(f"{benchmark} / {method}: {flag}" for flag in v.get("flags", []))
    return frame.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-") + "\n" + "\n".join(notes)


def _versions() -> dict:
    out = {}
    for pkg in ("vattr-bench", "torch", "transformers", "captum", "numpy", "scikit-image", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _git_hash(package: Path = Path(__file__).parent) -> str | None:
    """HEAD, with "-dirty" when the package's tracked files (its code, checkpoints and estimators) differ from
    it: the numbers then came from something no commit holds. Edits elsewhere (README, docs, tests), say
    while a long run goes on, do not make a run's numbers dirty."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=5).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
        return head + ("-dirty" if head and changed else "") or None
    except (OSError, subprocess.SubprocessError):
        return None
