"""Every span metric of one method on one sample, with undefined values accounted for.

A correlation is undefined on a span when one side is constant over the K regions. When it is the *truth*
(Δ constant: nothing in the image moves the span), the span tells nothing about any method and is left out
of every method's mean alike. When it is the *method's* scores (a method that abstains, or gives no ranking),
the method said nothing about that span: its correlation metrics there count as 0 — never dropped, which would
let a method raise its mean by abstaining where it is unsure — and the span is counted as undefined for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .faithfulness import (deletion_insertion_auc, lds, partial_pearson_per_span, pearson_per_span, size_residuals,
                           topk_drop)
from .plausibility import pointing_game
from .registry import METRICS, SPAN_METRICS


@dataclass
class SpanScores:
    values: dict[str, np.ndarray]  # metric -> (n_spans,), NaN where the metric has no value on that span
    method_undefined: np.ndarray  # (n_spans,) bool: the method's flat scores left a correlation undefined (read as 0)
    truth_undefined: np.ndarray  # (n_spans,) bool: the truth is constant there (left out for every method)


class SpanEvidence:
    """What the span metrics of one method on one sample read (`registry.Metric.compute`): the method's scores,
    the ablation truth, and the quantities several metrics share — each computed once, on first use, with the
    undefined-value rule of this module applied.

    ``ctx``: the harness's own context (model, trace, regions, sample: never a method's copy); ``scores`` and
    ``effects`` (n_spans, K) the method's scores and the single-region Δ; ``masks`` (n_subsets, K) and
    ``subset_effects`` (n_subsets, n_spans) for LDS."""

    def __init__(self, ctx, scores: np.ndarray, effects: np.ndarray, masks: np.ndarray, subset_effects: np.ndarray):
        self.ctx, self.scores, self.effects = ctx, scores, effects
        self.masks, self.subset_effects = masks, subset_effects
        self.flat_scores = np.ptp(scores, axis=1) == 0
        self.truth_flat = np.ptp(effects, axis=1) == 0
        self.predicted_flat = np.ptp(masks.astype(np.float64) @ scores.T, axis=0) == 0
        self.subsets_flat = np.ptp(subset_effects, axis=0) == 0

    @cached_property
    def pearson(self) -> np.ndarray:
        """Per span r of scores and Δ; the method's side undefined, the truth's defined: no information -> 0."""
        return np.where(self.flat_scores & ~self.truth_flat, 0.0, pearson_per_span(self.scores, self.effects))

    @cached_property
    def partial(self) -> np.ndarray:
        """Per span partial correlation with region size regressed out. Undefined on the truth's side (size
        explains Δ entirely) is left out for everyone; on the method's side alone (size explains its scores
        entirely, as region_area's) it is 0."""
        sizes = self.ctx.region_sizes()
        partial = partial_pearson_per_span(self.scores, self.effects, sizes)
        truth_beyond_size = ~size_residuals(self.effects, sizes)[1]
        return np.where(np.isnan(partial) & truth_beyond_size, 0.0, partial)

    @cached_property
    def lds(self) -> np.ndarray:
        return np.where(self.predicted_flat & ~self.subsets_flat, 0.0, lds(self.scores, self.masks, self.subset_effects))

    @cached_property
    def deletion_insertion(self) -> tuple[np.ndarray, np.ndarray]:
        return deletion_insertion_auc(self.ctx, self.scores)

    @cached_property
    def topk_drop(self) -> np.ndarray:
        return topk_drop(self.ctx, self.scores)

    @cached_property
    def pointing_game(self) -> np.ndarray:
        return pointing_game(self.scores, self.ctx.trace, self.ctx.sample, self.ctx.regions)

    @property
    def method_undefined(self) -> np.ndarray:
        """(n_spans,) the method's scores (or their subset sums) are flat where the truth is not. A partial
        correlation that size explains away on the method's side is a 0, not an abstention (region_area's)."""
        return (self.flat_scores & ~self.truth_flat) | (self.predicted_flat & ~self.subsets_flat)


def score_spans(ctx, scores: np.ndarray, effects: np.ndarray, masks: np.ndarray, subset_effects: np.ndarray) -> SpanScores:
    """Every span metric of the registry for one method's ``scores`` on one sample (arguments: `SpanEvidence`)."""
    evidence = SpanEvidence(ctx, scores, effects, masks, subset_effects)
    values = {name: METRICS[name].compute(evidence) for name in SPAN_METRICS}
    return SpanScores(values, evidence.method_undefined, evidence.truth_flat)
