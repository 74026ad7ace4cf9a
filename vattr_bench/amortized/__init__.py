"""The amortized attributor (shared/DESIGN.md §1): pooled attention features per (span, region) and a
linear estimator trained with a Pearson-correlation loss on subset-ablation effects."""
from .attributor import SpanAttributor, attribute_trace, capture_trace, trace_features
from .estimator import LinearEstimator, train_estimator
from .features import FEATURES, REGION_POOLS, feature_kind, region_pool_matrix, span_region_features, uses_value_norms

__all__ = ["LinearEstimator", "train_estimator", "span_region_features", "region_pool_matrix", "REGION_POOLS",
           "FEATURES", "feature_kind", "uses_value_norms", "SpanAttributor", "attribute_trace", "capture_trace",
           "trace_features"]
