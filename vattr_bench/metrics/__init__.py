"""Metrics (shared/DESIGN.md §3). All are per span; the harness averages them over all spans of a benchmark.

R² here is everywhere the **squared Pearson correlation** between a method's scores and the
single-region ablation effects over the K regions of a span (scale- and shift-free, as the estimator's
Pearson loss), never the coefficient of determination of a fitted line.
"""
from .faithfulness import deletion_insertion_auc, lds, pearson_per_span, topk_drop
from .plausibility import pointing_game

HIGHER_IS_BETTER = {
    "r2": True, "pearson": True, "lds": True, "deletion_auc": False, "insertion_auc": True,
    "topk_drop": True, "pointing_game": True, "sec_per_token": False, "peak_mem_mb": False,
}

__all__ = ["HIGHER_IS_BETTER", "pearson_per_span", "lds", "deletion_insertion_auc", "topk_drop", "pointing_game"]
