"""The method plugin contract: one class, one method returning an (n_spans, K) Attribution.

    class MyMethod:
        name = "my-method"
        def attribute(self, ctx: AttributionContext) -> np.ndarray: ...   # (n_spans, K), larger = more reliance

Register it under the ``vattr_bench.methods`` entry-point group, or pass ``--method path/file.py:MyMethod``.
The context gives the model adapter, the sample, the prepared input, the trace with its spans, the regions
and the ablation operator, plus cached shared quantities (attention to visual tokens, ablation effects).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..models.adapter import PreparedInput, VisionLanguageModel
from ..regions.ablation import single_region_effects
from ..types import Regions, Sample, Trace


@dataclass
class AttributionContext:
    model: VisionLanguageModel
    sample: Sample
    prepared: PreparedInput
    trace: Trace
    regions: Regions
    operator: str = "knockout"
    seed: int = 0
    cache: dict = field(default_factory=dict)

    @property
    def n_spans(self) -> int:
        return len(self.trace.spans)

    def cached(self, key: str, compute):
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def ablation_effects(self) -> np.ndarray:
        """Exhaustive single-region Δ (n_spans, K) under this context's operator (shared, cached)."""
        return self.cached("single_region_effects", lambda: single_region_effects(
            self.model, self.prepared, self.trace, self.regions, self.operator))

    def attention_to_visual(self) -> np.ndarray:
        """(L, H, T, N) attention from each trace token to each visual token (cached)."""
        return self.cached("attention_to_visual", lambda: self.model.attention_to_visual(self.prepared, self.trace.token_ids))

    def per_span_mean(self, per_token: np.ndarray) -> np.ndarray:
        """Average a (T, ...) array over each span's tokens -> (n_spans, ...)."""
        return np.stack([per_token[s.start:s.end].mean(0) for s in self.trace.spans])

    def tokens_to_regions(self, token_scores: np.ndarray) -> np.ndarray:
        """(n_spans, N) visual-token scores -> (n_spans, K), summed over each region's tokens."""
        return token_scores @ self.regions.token_matrix.T.astype(np.float64)


class AttributionMethod:
    """Base class for the built-ins (plugins need not subclass it: ``name`` + ``attribute`` suffice)."""

    name: str = "method"
    # the cost of a method that reads the cached ablation effects is the ablation itself
    uses_ablation: bool = False

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        raise NotImplementedError

    def settings(self) -> dict:
        """What else decides this method's scores, for results.json (JSON-safe; optional for plugins)."""
        return {}
