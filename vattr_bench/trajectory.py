"""`vattr-bench trajectory`: does where a trace looks early on predict whether its answer will be wrong?

Per sample (by default the five hard families, where vattr-tiny fails often enough to learn from):
the model's greedy trace, feature-ward regions, and — for the part of the trace seen so far at 10%, 20%,
… 100% of its tokens — the amortized attributions of the spans seen so far (the span in progress cut
where the trace is cut) and the same spans' exhaustive single-region ablation effects (each token's once,
summed over the cut spans' tokens: a token's log-prob depends only on what precedes it), so nothing after
the cut enters. They are kept per sample under
``output_dir/cache`` (a killed run resumes where it stopped).

From each cut, five features of the attribution matrix A (seen spans × K regions), with P_s the span's
|A_s| normalised to sum 1 over regions (`trajectory_features`):

- ``top_mass``: mean over spans of max_k P_s,k (how much the span rests on its top region);
- ``entropy``: mean over spans of the entropy of P_s over regions, ÷ log K (1 = spread evenly);
- ``evidence_mass``: mean over spans of Σ_k P_s,k e_k, e_k the share of region k's pixels inside one of
  the sample's evidence boxes (how much lands on what the question is about);
- ``step_change``: mean over consecutive spans of ½‖P_s − P_{s−1}‖₁ (how far the focus moves per step);
- ``image_reliance``: mean over spans of Σ_k A_s,k per token (how much the span leans on the image at all).

The features are standardised within each family (no labels used), so the regression cannot predict
failure from which family a sample comes from; then a logistic regression, stratified k-fold, predicts
failure (answer wrong) out of fold, and the AUC of those predictions is reported per cut with a
bootstrap 95% interval (samples resampled, the out-of-fold predictions kept).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .benchmarks import SPLITS, resolve_families, synthetic_sample
from .storage import claim_settings, load_arrays, save_arrays, write_text_atomically
from .types import Span, Trace

logger = logging.getLogger(__name__)

FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
FEATURES = ("top_mass", "entropy", "evidence_mass", "step_change", "image_reliance")
SOURCES = ("amortized", "ablation")  # where the attributions come from: the estimator, or the ground truth
CACHED = ("correct", "n_tokens", "amortized", "ablation", "span_tokens", "region_evidence")


@dataclass
class TrajectoryConfig:
    model: str = "vattr-tiny"
    benchmark: str = "hard"
    limit: int = 30
    output_dir: str = "runs/trajectory"
    split: str = "test"
    seed: int = 0  # the samples' seed, and that of the folds and the bootstrap
    regions: str = "feature-ward"
    k: int = 16
    ablation: str = "knockout"
    max_new_tokens: int = 128
    estimator: str | None = None  # the amortized estimator's JSON (default: the one shipped for the model)
    folds: int = 5
    n_bootstrap: int = 1000

    def validate(self) -> list[str]:
        families = resolve_families(self.benchmark)
        if self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose from {', '.join(SPLITS)}")
        if self.folds < 2:
            raise ValueError(f"--folds must be at least 2, got {self.folds}")
        if self.n_bootstrap < 100:
            raise ValueError(f"--n-bootstrap must be at least 100 for a 95% interval, got {self.n_bootstrap}")
        return families

    def cache_key(self) -> dict:
        """What a sample's cached trace and attributions depend on."""
        return {k: getattr(self, k) for k in ("model", "split", "seed", "regions", "k", "ablation", "max_new_tokens")}


def cut_points(n_tokens: int, first_span_start: int) -> list[int]:
    """Tokens seen at each fraction of the trace: ⌈f·T⌉, and never before the first span's first token
    (a cut that holds only `<think>` would have nothing to attribute)."""
    return [min(n_tokens, max(math.ceil(f * n_tokens - 1e-9), first_span_start + 1)) for f in FRACTIONS]


def cut_trace(trace: Trace, n_seen: int) -> Trace:
    """The trace as it stood after ``n_seen`` tokens: the spans begun by then, the last one cut there."""
    spans = [replace(s, end=min(s.end, n_seen)) for s in trace.spans if s.start < n_seen]
    return Trace(list(trace.token_ids[:n_seen]), trace.text, spans, trace.logprobs[:n_seen], trace.answer)


def region_evidence(regions, sample) -> np.ndarray:
    """(K,) share of each region's pixels inside any of the sample's evidence boxes (zeros without boxes)."""
    inside = np.zeros(regions.pixel_masks.shape[1:], dtype=bool)
    for step in sample.steps:
        x0, y0, x1, y1 = step.box
        inside[y0:y1, x0:x1] = True
    sizes = regions.pixel_masks.sum((1, 2))
    return (regions.pixel_masks & inside).sum((1, 2)) / np.maximum(sizes, 1)


def sample_record(model, sample, estimator, cfg: TrajectoryConfig) -> dict:
    """One sample's trace, correctness and, per cut, the seen spans' amortized and ablation attributions
    ((n_cuts, n_spans, K), NaN rows for spans not begun yet) and their lengths in tokens."""
    from .amortized import attribute_trace
    from .models.prompting import is_correct
    from .regions import make_regions, single_region_effects

    prepared = model.prepare(sample.image, sample.prompt)
    trace = model.generate(prepared, max_new_tokens=cfg.max_new_tokens)
    if not trace.spans:
        raise ValueError(f"the model wrote no span to attribute (trace: {trace.text!r})")
    regions, _ = make_regions(cfg.regions, model, prepared, k=cfg.k, sample=sample)
    # Δ of every token alone (each token a span of its own): K teacher-forced passes once. A token's log-prob
    # depends only on what comes before it, so a cut span's Δ is the sum of its tokens' rows — the same
    # numbers as single_region_effects on the cut trace, without K passes per cut.
    tokens = replace(trace, spans=[Span(t, t + 1, "") for t in range(len(trace.token_ids))])
    token_effects = single_region_effects(model, prepared, tokens, regions, cfg.ablation)  # (T, K)
    shape = (len(FRACTIONS), len(trace.spans), regions.k)
    amortized, ablation = np.full(shape, np.nan), np.full(shape, np.nan)
    span_tokens = np.zeros(shape[:2])
    for i, n_seen in enumerate(cut_points(len(trace.token_ids), trace.spans[0].start)):
        seen = cut_trace(trace, n_seen)
        n = len(seen.spans)
        amortized[i, :n] = attribute_trace(model, prepared, seen, regions, estimator)
        ablation[i, :n] = [token_effects[s.start:s.end].sum(0) for s in seen.spans]
        span_tokens[i, :n] = [s.end - s.start for s in seen.spans]
    return {"correct": bool(is_correct(trace.answer, sample.reference)), "n_tokens": len(trace.token_ids),
            "amortized": amortized, "ablation": ablation, "span_tokens": span_tokens,
            "region_evidence": region_evidence(regions, sample), "token_ids": np.array(trace.token_ids),
            "token_effects": token_effects}


def trajectory_features(scores: np.ndarray, span_tokens: np.ndarray, evidence: np.ndarray,
                        per_token: bool) -> np.ndarray:
    """FEATURES of one cut: ``scores`` (n_seen, K) attributions of the spans seen, ``span_tokens`` their
    lengths, ``evidence`` (K,) the regions' evidence shares; ``per_token``: the scores are sums over the
    span's tokens (ablation effects) rather than means (the amortized estimator's), so divide for reliance."""
    k = scores.shape[1]
    magnitude = np.abs(scores)
    share = magnitude / np.maximum(magnitude.sum(1, keepdims=True), 1e-12)  # P_s; a span with all zeros gets 0s
    logs = np.log(np.where(share > 0, share, 1.0))
    entropy = -(share * logs).sum(1) / np.log(k)
    change = 0.5 * np.abs(np.diff(share, axis=0)).sum(1) if len(share) > 1 else np.zeros(1)
    reliance = scores.sum(1) / (np.maximum(span_tokens, 1) if per_token else 1.0)
    return np.array([share.max(1).mean(), entropy.mean(), (share @ evidence).mean(), change.mean(), reliance.mean()])


def feature_table(records: list[dict], source: str) -> np.ndarray:
    """(n_samples, n_cuts, n_features) features of every record, from the ``source`` attributions."""
    out = np.zeros((len(records), len(FRACTIONS), len(FEATURES)))
    for r, rec in enumerate(records):
        for i in range(len(FRACTIONS)):
            n = int((rec["span_tokens"][i] > 0).sum())
            out[r, i] = trajectory_features(rec[source][i, :n], rec["span_tokens"][i, :n], rec["region_evidence"],
                                            per_token=source == "ablation")
    return out


def standardise_within(features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each feature z-scored within each group (family) over the samples: label-free, and the family's own
    level — which alone would tell families with more failures apart — removed."""
    out = np.zeros_like(features)
    for g in np.unique(groups):
        rows = features[groups == g]
        std = rows.std(0)
        out[groups == g] = (rows - rows.mean(0)) / np.where(std > 0, std, 1.0)
    return out


def out_of_fold_probabilities(x: np.ndarray, failed: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """P(failure) of each sample from a logistic regression fitted on the other folds (stratified)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return cross_val_predict(model, x, failed, cv=splitter, method="predict_proba")[:, 1]


def auc_with_interval(failed: np.ndarray, probability: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, list[float]]:
    """ROC AUC and its bootstrap 95% percentile interval (samples resampled with replacement; a resample
    that holds one class only is drawn again)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    values = []
    while len(values) < n_bootstrap:
        pick = rng.integers(0, len(failed), len(failed))
        if failed[pick].min() != failed[pick].max():
            values.append(roc_auc_score(failed[pick], probability[pick]))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(roc_auc_score(failed, probability)), [float(lo), float(hi)]


def analyse(records: list[dict], families: list[str], cfg: TrajectoryConfig) -> dict:
    """AUC of out-of-fold failure predictions per cut, from amortized and from ablation attributions."""
    failed = np.array([not r["correct"] for r in records], dtype=int)
    n_failed = int(failed.sum())
    if min(n_failed, len(failed) - n_failed) < 2:
        raise ValueError(f"AUC is undefined here: {n_failed} of {len(failed)} samples were answered wrong "
                         "(a failure predictor needs at least 2 right and 2 wrong answers); use more samples "
                         "(--limit) or harder ones (--benchmark hard)")
    folds = min(cfg.folds, n_failed, len(failed) - n_failed)  # each fold must hold both classes
    groups = np.array(families)
    result = {"auc": {}, "auc_ablation": {}, "ci95": {"auc": {}, "auc_ablation": {}}}
    for source, key in (("amortized", "auc"), ("ablation", "auc_ablation")):
        table = feature_table(records, source)
        for i, f in enumerate(FRACTIONS):
            x = standardise_within(table[:, i], groups)
            probability = out_of_fold_probabilities(x, failed, folds, cfg.seed)
            auc, ci = auc_with_interval(failed, probability, cfg.n_bootstrap, cfg.seed)
            result[key][str(f)], result["ci95"][key][str(f)] = auc, ci
    per_family = {fam: {"n_samples": int((groups == fam).sum()),
                        "failure_rate": float(failed[groups == fam].mean())} for fam in dict.fromkeys(families)}
    return {**result, "n_samples": len(records), "failure_rate": float(failed.mean()), "n_failed": n_failed,
            "folds": folds, "per_family": per_family}


def run_trajectory(cfg: TrajectoryConfig) -> dict:
    from .methods.amortized import Amortized
    from .models import load_model

    families = cfg.validate()
    out = Path(cfg.output_dir)
    model = load_model(cfg.model)
    estimator = Amortized(cfg.estimator).load_for(model, cfg.regions, cfg.ablation)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    claim_settings(out / "trajectory-config.json", {**cfg.cache_key(), "estimator_sha256": estimator.digest},
                   "trajectories")
    records, record_families, skipped = [], [], {}
    todo = [(fam, i) for fam in families for i in range(cfg.limit)]
    for family, index in tqdm(todo, desc="trajectory", unit="sample"):
        sample = synthetic_sample(family, index, cfg.split, cfg.seed)
        path = cache / f"{sample.id}.npz"
        record = load_arrays(path, CACHED)
        if record is None:
            try:
                record = sample_record(model, sample, estimator, cfg)
            except ValueError as e:  # a sample the model wrote nothing for is reported, and the run goes on
                skipped[sample.id] = str(e)
                logger.warning(f"sample {sample.id} skipped: {e}")
                continue
            save_arrays(path, **record)
        records.append(record)
        record_families.append(family)
    report = analyse(records, record_families, cfg)
    report.update({"fractions": list(FRACTIONS), "features": list(FEATURES), "skipped": skipped,
                   "config": {**asdict(cfg), "families": families, "estimator_sha256": estimator.digest}})
    write_text_atomically(out / "trajectory.json", json.dumps(report, indent=1))
    save_trajectory_png(report, out / "trajectory.png")
    logger.info(format_report(report))
    logger.info(f"wrote {out / 'trajectory.json'} and {out / 'trajectory.png'}")
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['n_samples']} samples, {report['failure_rate']:.0%} answered wrong; failure predicted "
             f"out of fold ({report['folds']}-fold logistic regression) from the trace seen so far:",
             "| fraction of trace | AUC amortized [95%] | AUC ablation [95%] |", "|---|---|---|"]
    for f in report["auc"]:
        a, b = report["ci95"]["auc"][f], report["ci95"]["auc_ablation"][f]
        lines.append(f"| {f} | {report['auc'][f]:.2f} [{a[0]:.2f}, {a[1]:.2f}] | "
                     f"{report['auc_ablation'][f]:.2f} [{b[0]:.2f}, {b[1]:.2f}] |")
    return "\n".join(lines)


def save_trajectory_png(report: dict, path: Path) -> None:
    """AUC against the fraction of the trace seen, amortized and ablation with their 95% bands, chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, colour in (("auc", "amortized", "tab:orange"), ("auc_ablation", "ablation (ground truth)", "tab:blue")):
        x = [float(f) for f in report[key]]
        lo, hi = zip(*report["ci95"][key].values())
        ax.plot(x, list(report[key].values()), marker="o", color=colour, label=label)
        ax.fill_between(x, lo, hi, color=colour, alpha=0.2)
    ax.axhline(0.5, color="gray", linestyle="--", label="chance")
    ax.set_xlabel("fraction of the trace seen (tokens)")
    ax.set_ylabel("AUC of failure prediction (out of fold)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['n_samples']} samples, {report['failure_rate']:.0%} wrong")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
