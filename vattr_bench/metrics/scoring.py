"""Every span metric of one method on one sample, with undefined values accounted for.

A correlation is undefined on a span when one side is constant over the K regions. When it is the *truth*
(Δ constant: nothing in the image moves the span), the span tells nothing about any method and is left out
of every method's mean alike. When it is the *method's* scores (a method that abstains, or gives no ranking),
the method said nothing about that span: its correlation metrics there count as 0 — never dropped, which would
let a method raise its mean by abstaining where it is unsure — and the span is counted as undefined for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .faithfulness import (deletion_insertion_auc, lds, partial_pearson_per_span, pearson_per_span, size_residuals,
                           topk_drop)
from .plausibility import pointing_game
from .registry import SPAN_METRICS


@dataclass
class SpanScores:
    values: dict[str, np.ndarray]  # metric -> (n_spans,), NaN where the metric has no value on that span
    method_undefined: np.ndarray  # (n_spans,) bool: the method's flat scores left a correlation undefined (read as 0)
    truth_undefined: np.ndarray  # (n_spans,) bool: the truth is constant there (left out for every method)


def score_spans(ctx, scores: np.ndarray, effects: np.ndarray, masks: np.ndarray, subset_effects: np.ndarray) -> SpanScores:
    """``ctx``: the harness's own context (model, trace, regions, sample: never a method's copy); ``effects``
    (n_spans, K) single-region Δ; ``masks`` (n_subsets, K) and ``subset_effects`` (n_subsets, n_spans) for LDS."""
    sizes = ctx.region_sizes()
    flat_scores = np.ptp(scores, axis=1) == 0
    truth_flat = np.ptp(effects, axis=1) == 0
    pearson = pearson_per_span(scores, effects)
    partial = partial_pearson_per_span(scores, effects, sizes)
    subset_scores = lds(scores, masks, subset_effects)
    predicted_flat = np.ptp(masks.astype(np.float64) @ scores.T, axis=0) == 0
    subsets_flat = np.ptp(subset_effects, axis=0) == 0
    # the method's side undefined, the truth's defined: the method gave no information there -> 0
    pearson = np.where(flat_scores & ~truth_flat, 0.0, pearson)
    # size-controlled: undefined on the truth's side (size explains Δ entirely) is left out for everyone; on the
    # method's side alone (size explains its scores entirely, as region_area's) it is 0
    truth_beyond_size = ~size_residuals(effects, sizes)[1]
    partial_undefined = np.isnan(partial) & truth_beyond_size
    partial = np.where(partial_undefined, 0.0, partial)
    subset_scores = np.where(predicted_flat & ~subsets_flat, 0.0, subset_scores)
    deletion, insertion = deletion_insertion_auc(ctx, scores)
    values = {
        "r2_signed": np.sign(pearson) * pearson ** 2, "r2": pearson ** 2, "pearson": pearson,
        "r2_partial_size": np.sign(partial) * partial ** 2, "lds": subset_scores,
        "deletion_auc": deletion, "insertion_auc": insertion, "topk_drop": topk_drop(ctx, scores),
        "pointing_game": pointing_game(scores, ctx.trace, ctx.sample, ctx.regions),
    }
    # undefined by the method: its scores (or their subset sums) are flat where the truth is not. A partial
    # correlation that size explains away on the method's side is a 0, not an abstention (region_area's)
    method_undefined = (flat_scores & ~truth_flat) | (predicted_flat & ~subsets_flat)
    return SpanScores({m: values[m] for m in SPAN_METRICS}, method_undefined, truth_flat)

