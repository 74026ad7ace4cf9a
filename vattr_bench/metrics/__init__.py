"""Metrics, all per span (the harness averages them over all spans of a benchmark) but the costs, per sample.

The list of metrics, their directions and meanings is `registry.METRICS`. r2 here is everywhere the **squared
Pearson correlation** between a method's scores and the single-region ablation effects over the K regions of a
span (scale- and shift-free, as the estimator's Pearson loss), never the coefficient of determination of a
fitted line; ``r2_signed`` carries the sign of that correlation and is what the benchmark ranks by.
"""
from .faithfulness import deletion_insertion_auc, lds, partial_pearson_per_span, pearson_per_span, topk_drop
from .plausibility import pointing_game
from .registry import (COST_METRICS, HIGHER_IS_BETTER, METRICS, RANKING_METRIC, SPAN_METRICS, Metric)
from .scoring import SpanEvidence, SpanScores, score_spans

__all__ = ["COST_METRICS", "HIGHER_IS_BETTER", "METRICS", "Metric", "RANKING_METRIC", "SPAN_METRICS", "SpanEvidence", "SpanScores",
           "deletion_insertion_auc", "lds", "partial_pearson_per_span", "pearson_per_span", "pointing_game",
           "score_spans", "topk_drop"]
