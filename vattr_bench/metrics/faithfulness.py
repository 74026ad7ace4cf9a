"""Faithfulness of an attribution (n_spans, K) against ablation of the model's own trace."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr

from ..regions.ablation import span_logprob_drop, span_matrix

TOP_K = 5


def _safe(fn, a, b) -> float:
    """A correlation is undefined when either side is constant: NaN, excluded from averages."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(fn(a, b)[0])


def pearson_per_span(scores: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """Pearson r over regions between scores[s] and Δ[s], one value per span."""
    return np.array([_safe(pearsonr, s, e) for s, e in zip(scores, effects)])


def size_residuals(values: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``values`` (n, K) minus its least-squares line in region size ``sizes`` (K,), and per row
    whether the residual is flat (size explains the row entirely)."""
    design = np.stack([np.ones(len(sizes)), np.asarray(sizes, dtype=np.float64)], axis=1)  # (K, 2)
    projector = design @ np.linalg.pinv(design)  # onto span{1, size}
    values = np.asarray(values, dtype=np.float64)
    residuals = values - values @ projector.T
    # flat: the residual is at rounding level of the row's own magnitude (a constant row leaves ~1e-16 of noise)
    flat = np.ptp(residuals, axis=1) <= 1e-9 * np.maximum(np.abs(values).max(axis=1), 1e-300)
    return residuals, flat


def partial_pearson_per_span(scores: np.ndarray, effects: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per span, the partial correlation of scores[s] and Δ[s] over regions with region size controlled:
    Pearson of both sides' residuals after a line in ``sizes`` (`size_residuals`). With equal sizes it is plain
    Pearson. NaN where either residual is flat."""
    rs, flat_s = size_residuals(scores, sizes)
    re, flat_e = size_residuals(effects, sizes)
    return np.array([np.nan if fs or fe else float(pearsonr(a, b)[0])
                     for a, b, fs, fe in zip(rs, re, flat_s, flat_e)])


def lds(scores: np.ndarray, masks: np.ndarray, subset_effects: np.ndarray) -> np.ndarray:
    """Linear datamodeling score per span: Spearman over subsets v between the true Δ(S, v) and the
    additive prediction Σ_k v_k score_k. ``masks`` (n, K) bool, ``subset_effects`` (n, n_spans)."""
    predicted = masks.astype(np.float64) @ scores.T  # (n, n_spans)
    return np.array([_safe(spearmanr, predicted[:, s], subset_effects[:, s]) for s in range(scores.shape[0])])


def _curve_steps(k: int, n_points: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, k, n_points)).astype(int))


def deletion_insertion_auc(ctx, scores: np.ndarray, n_points: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Per span, remove (deletion) or restore (insertion) regions in the method's order, most
    important first, and follow the span's geometric-mean token probability exp(mean_t log p(y_t)) —
    a curve already normalised to [0, 1]; the area under it over the fraction of regions removed /
    restored (trapezoid, n_points steps). Deletion: lower is better; insertion: higher is better."""
    k, n_spans = ctx.regions.k, ctx.n_spans
    steps = _curve_steps(k, n_points)
    masks = []  # (span, step) -> removed regions, for deletion then insertion
    for span_scores in scores:
        order = np.argsort(-span_scores, kind="stable")
        for m in steps:
            removed = np.zeros(k, dtype=bool)
            removed[order[:m]] = True
            masks.append(removed)       # deletion: the top m are gone
            masks.append(~removed)      # insertion: only the top m are back
    drops = span_logprob_drop(ctx.model, ctx.prepared, ctx.trace, ctx.regions, np.array(masks), ctx.operator)
    drops = drops.reshape(n_spans, len(steps), 2, n_spans)
    lengths = np.array([s.end - s.start for s in ctx.trace.spans])
    base = (ctx.trace.logprobs[None, :] @ span_matrix(ctx.trace))[0]  # (n_spans,) summed log-prob
    x = steps / k
    deletion, insertion = np.zeros(n_spans), np.zeros(n_spans)
    for s in range(n_spans):
        curve = np.exp((base[s] - drops[s, :, :, s]) / lengths[s])  # (steps, 2)
        deletion[s] = np.trapezoid(curve[:, 0], x)
        insertion[s] = np.trapezoid(curve[:, 1], x)
    return deletion, insertion


def topk_drop(ctx, scores: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per span: log-prob drop after ablating the method's top-k regions together (higher = more faithful)."""
    masks = np.zeros((len(scores), ctx.regions.k), dtype=bool)
    for s, span_scores in enumerate(scores):
        masks[s, np.argsort(-span_scores, kind="stable")[:k]] = True
    drops = span_logprob_drop(ctx.model, ctx.prepared, ctx.trace, ctx.regions, masks, ctx.operator)
    return np.diag(drops).copy()
