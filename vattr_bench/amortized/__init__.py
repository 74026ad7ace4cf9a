"""The amortized attributor: pooled attention features per (span, region) and a
linear estimator trained with a Pearson-correlation loss on subset-ablation effects."""
from .attributor import SpanAttributor, attribute_trace, capture_trace, trace_features
from .estimator import LinearEstimator, train_estimator
from .features import (FEATURES, LOGIT_FEATURES, REGION_POOLS, capture_options, feature_kind, feature_label,
                       feature_sign_weight, region_pool_matrix, span_region_features)

__all__ = ["LinearEstimator", "train_estimator", "span_region_features", "region_pool_matrix", "REGION_POOLS",
           "FEATURES", "LOGIT_FEATURES", "feature_kind", "feature_label", "feature_sign_weight", "capture_options",
           "SpanAttributor", "attribute_trace", "capture_trace", "trace_features"]
