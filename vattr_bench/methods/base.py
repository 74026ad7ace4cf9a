"""The method contract: what the harness reads from a method, and the context a method reads.

    class MyMethod:
        name = "my-method"
        def attribute(self, ctx: AttributionContext) -> np.ndarray: ...   # (n_spans, K), larger = more reliance

That is all a plugin needs (`AttributionMethodProtocol` names it, and the optional parts). Register it under the
``vattr_bench.methods`` entry-point group, or pass ``--method path/file.py:MyMethod``.

The context gives the model adapter, the sample, the prepared input, the model's trace with its spans, the
regions and the ablation operator. It does **not** give the ablation ground truth the method is scored against:
`ctx.ablation_effects()` raises `GroundTruthAccessError` unless the method declares ``reads_ground_truth =
True``, and such a method is a reference in the results, never ranked. A method may still run the model itself,
perturbations included: that is attribution, paid for on the method's own clock. The harness hands each method
its own copy of the context, so nothing one method does to it reaches another method or the scoring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..models.adapter import PreparedInput, VisionLanguageModel
from ..regions.ablation import single_region_effects
from ..types import Regions, Sample, Trace


class GroundTruthAccessError(PermissionError):
    """A method read the ablation ground truth without declaring ``reads_ground_truth``."""


@runtime_checkable
class AttributionMethodProtocol(Protocol):
    """Everything the harness reads from a method. Only ``name`` and ``attribute`` are required; the rest has
    the defaults of `AttributionMethod`:

    - ``settings()`` → JSON-safe dict of what else decides the scores (an estimator file, a temperature);
      recorded in results.json, and a resumed run refuses to mix scores made under other settings;
    - ``reads_ground_truth`` → the method reads `ctx.ablation_effects()`: a reference, never ranked, and its
      cost is the ablation's;
    - ``reference`` → a reference or null baseline (shown marked, never ranked) even without reading the truth.
    """

    name: str

    def attribute(self, ctx: "AttributionContext") -> np.ndarray: ...


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
    # False in the contexts the harness hands to methods that did not declare `reads_ground_truth`; a context
    # built by hand (a notebook, a test) may compute the truth itself
    may_read_ground_truth: bool = True

    @property
    def n_spans(self) -> int:
        return len(self.trace.spans)

    def cached(self, key: str, compute):
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def ablation_effects(self) -> np.ndarray:
        """Exhaustive single-region Δ (n_spans, K) under this context's operator: the ground truth. Only for
        methods that declare ``reads_ground_truth`` (references)."""
        if not self.may_read_ground_truth:
            raise GroundTruthAccessError(
                "this method reads the ablation ground truth (ctx.ablation_effects()) without declaring "
                "reads_ground_truth = True; a method that does is a reference, never ranked")
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

    def region_sizes(self) -> np.ndarray:
        """(K,) visual tokens per region."""
        return self.regions.token_matrix.sum(1).astype(np.float64)


class AttributionMethod:
    """Base class for the built-ins (plugins need not subclass it: ``name`` + ``attribute`` suffice)."""

    name: str = "method"
    reads_ground_truth: bool = False
    reference: bool = False

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        raise NotImplementedError

    def settings(self) -> dict:
        """What else decides this method's scores, for results.json (JSON-safe; optional for plugins)."""
        return {}


def reads_ground_truth(method) -> bool:
    return bool(getattr(method, "reads_ground_truth", False))


def is_reference(method) -> bool:
    """A reference (reads the truth) or null baseline: reported, marked, never ranked."""
    return reads_ground_truth(method) or bool(getattr(method, "reference", False))
