"""Amortized scores of a trace's spans, from a model's attention capture: the one computation behind both
the offline `amortized` method and the streaming worker."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models.adapter import CaptureOptions
from ..types import Regions, Trace
from .estimator import LinearEstimator
from .features import (LOGIT_FEATURES, capture_options, feature_kind, logit_weighted_per_token, region_pool_matrix,
                       feature_sign_weight, signed_span_parts, span_region_features)

if TYPE_CHECKING:
    from ..models.capture import VisualAttentionCapture


class SpanAttributor:
    """The amortized method's whole per-span cost once the model has run: a span's captured rows →
    attention weights to the visual tokens → pooled → estimator → (K,) scores.

    The same numbers as ``estimator.predict(span_region_features(...))``, for attention and value-weighted
    features in the cheaper order: the estimator is linear in the pooled attention, so the weights are
    applied per visual token and summed over the span's tokens in one pass (Σ_lh c_lh,n · Σ_t a_lh,t,n / n,
    with c = w, or w·‖W_O^h v_n‖ for value-weighted features, folded once per capture) and only that (N,)
    vector is pooled into regions. Logit-weighted features take a magnitude per token after the region
    sum, so they are pooled per token (`logit_weighted_per_token`, as `span_region_features` does), averaged
    over the span's tokens (direct-logit features: each token's over its rms at the final norm; direct-logit-signed
    ones: |x| + β·x of each token's x), then weighted.
    Memory is one span's weights, whatever the trace length. For a capture on the host all numpy (see
    VisualAttentionCapture.rows): the streaming worker calls it from its own thread, with numpy's BLAS held
    to one thread (`streaming.one_blas_thread`) so that it stays off the cores generation uses. For a
    capture on an accelerator (``capture.on_device``) the same computation in torch there, in float32;
    only the (K,) scores come back.
    An estimator that uses some heads only (``meta["heads"]``) reads a capture opened for those
    (`capture_options`), so the weights, logit rows and products are computed for those heads alone."""

    def __init__(self, capture, regions: Regions, estimator: LinearEstimator):
        self.capture = capture
        heads = getattr(capture, "heads", None)
        if (heads is None) != (estimator.meta.get("heads") is None) or \
                (heads is not None and list(heads) != list(estimator.meta["heads"])):
            raise ValueError("the capture must read the heads the estimator uses: open it with "
                             "capture_options(estimator.meta)")
        weights = np.asarray(estimator.weights, dtype=np.float64)  # (L·H,)
        self.n_heads = len(weights)  # L·H
        self.heads = heads
        self.weights = weights if heads is None else weights[heads]  # (F,): one per head read
        self.bias = estimator.bias
        self.pool = region_pool_matrix(regions.token_matrix, estimator.meta.get("region_pool", "sum"))  # (K, N)
        self.pool32 = self.pool.astype(np.float32)  # for float32 captures' products
        self.kind = feature_kind(estimator.meta)
        self.sign_weight = feature_sign_weight(estimator.meta)  # β of |x| + β·x per token (0 but for direct-logit-signed)
        self.norm_scale = capture_options(estimator.meta).norm_scale  # each token over its rms at the final norm
        self._per_token = None  # (F, N) c_lh,n, at the first span (the prompt has run by then)
        self._device_factors = None  # (c or w, pool) as float32 tensors on the capture's device, at its first span

    def __call__(self, start: int, end: int, token_ids=None) -> np.ndarray:
        """(K,) scores of the span of trace tokens [start, end); ``token_ids``, the span's tokens, only
        the logit kinds need."""
        rows = self.capture.weights(start, end)  # (L, H, n, N), or (F, n, N) for the heads read
        n, N = rows.shape[-2:]
        if self.heads is None and rows.shape[0] * rows.shape[1] != self.n_heads:
            raise ValueError(f"the model has {rows.shape[0]}×{rows.shape[1]} attention heads, the estimator "
                             f"{self.n_heads} weights")
        F = len(self.weights)
        rows = rows.reshape(F, n, N)
        if self.kind in LOGIT_FEATURES and (token_ids is None or len(token_ids) != n):
            raise ValueError(f"{self.kind} features need the span's {n} token ids, got "
                             f"{None if token_ids is None else len(token_ids)}")
        scales = self.capture.token_scales(start, end) if self.norm_scale else None  # (n,) 1/rms
        if isinstance(rows, torch.Tensor):
            return self._scores_on_device(rows, token_ids, scales)
        if self.kind in LOGIT_FEATURES:
            logit_values = self.capture.logit_values(token_ids).reshape(F, n, N)
            per_token = logit_weighted_per_token(rows, logit_values, self.pool32, self.sign_weight)  # (F, n, K)
            # the mean over the span's tokens folded into the weights: Σ_lh w_lh Σ_t s_t f_lh,t / n, one product
            token_weights = np.repeat(self.weights / n, n) if scales is None else np.outer(self.weights / n, scales).ravel()
            return (token_weights @ per_token.reshape(F * n, -1)) + self.bias
        if self._per_token is None:
            self._per_token = self._visual_token_weights(N).astype(np.float32)
        # Σ_lh Σ_t c_lh,n a_lh,t,n in one float32 pass (~1e-7 relative here; float64 cost 2× the time)
        per_visual_token = np.einsum("htn,hn->n", rows, self._per_token)
        return self.pool @ (per_visual_token / n) + self.bias

    def _visual_token_weights(self, n_visual: int) -> np.ndarray:
        """(F, N) float64 c_lh,n = w_lh, or w_lh·‖W_O^h v_n‖ for value-weighted features, for the heads read
        (attention and value-weighted kinds; read once the prompt has run)."""
        if self.kind != "value-weighted":
            return self.weights[:, None] * np.ones(n_visual)
        norms = self.capture.value_norms.reshape(self.n_heads, n_visual)
        return self.weights[:, None] * (norms if self.heads is None else norms[self.heads])

    @torch.no_grad()
    def _scores_on_device(self, rows: torch.Tensor, token_ids, scales: torch.Tensor | None) -> np.ndarray:
        """`__call__`'s computation in torch on the rows' device: a handful of kernels, then (K,) to the host."""
        F, n, N = rows.shape
        if self._device_factors is None:
            weights = torch.as_tensor(self.weights, dtype=torch.float32, device=rows.device)
            if self.kind in LOGIT_FEATURES:
                per_token = weights
            else:
                per_token = torch.as_tensor(self._visual_token_weights(N), dtype=torch.float32, device=rows.device)
            self._device_factors = per_token, torch.as_tensor(self.pool32, device=rows.device)
        per_token, pool = self._device_factors
        if self.kind in LOGIT_FEATURES:
            signed = (rows * self.capture.logit_values(token_ids).reshape(F, n, N)).reshape(-1, N) @ pool.T  # (F·n, K)
            weighted = (signed.abs().add_(signed, alpha=self.sign_weight) if self.sign_weight else signed.abs_())
            weighted = weighted.reshape(F, n, -1)
            if scales is not None:
                weighted *= scales[:, None]
            scores = (per_token / n) @ weighted.sum(1)
        else:
            scores = pool @ (torch.einsum("htn,hn->n", rows, per_token) / n)
        return scores.double().cpu().numpy() + self.bias


def capture_trace(model, prepared, trace_ids, options: CaptureOptions) -> VisualAttentionCapture:
    """The model's attention capture after one teacher-forced pass over prompt + trace: every trace token's
    query row (``options``: what else to keep, `capture_options`). Raises NotImplementedError for an
    adapter that cannot capture."""
    with model.capture_visual_attention(prepared, options) as capture:
        model.token_logprobs(prepared, list(trace_ids))
    return capture


def attribute_trace(model, prepared, trace: Trace, regions: Regions, estimator: LinearEstimator) -> np.ndarray:
    """(n_spans, K) amortized scores of a finished trace: one teacher-forced pass with the capture on, then
    span by span what the streaming worker does. An adapter without a capture gets the reference
    computation instead: its full (L, H, T, N) attention pooled by `span_region_features`."""
    try:
        capture = capture_trace(model, prepared, trace.token_ids, capture_options(estimator.meta))
    except NotImplementedError:
        return estimator.predict(trace_features(model, prepared, trace, regions.token_matrix,
                                                estimator.meta.get("region_pool", "sum"), feature_kind(estimator.meta),
                                                feature_sign_weight(estimator.meta)))
    attributor = SpanAttributor(capture, regions, estimator)
    ids = list(trace.token_ids)
    return np.array([attributor(s.start, s.end, ids[s.start:s.end]) for s in trace.spans]).reshape(len(trace.spans), regions.k)


def trace_features(model, prepared, trace: Trace, token_matrix: np.ndarray, region_pool: str = "sum",
                   features: str = "attention", sign_weight: float = 0.0) -> np.ndarray:
    """(n_spans, K, L·H) features of kind ``features`` (``sign_weight``: β of direct-logit-signed ones) for a
    finished trace (what the estimator trains on): the attention and what weighs it from one captured pass,
    or, for an adapter that cannot capture, from its `attention_to_visual` and `visual_value_norms`."""
    options = replace(capture_options({"features": features}), on_device=False)  # numpy, wherever the model is
    try:
        capture = capture_trace(model, prepared, trace.token_ids, options)
    except NotImplementedError:
        if options.logit_readout:
            raise NotImplementedError(f"{type(model).__name__} cannot capture attention, which {features} "
                                      "features need; use an estimator trained with --features value-weighted") from None
        norms = model.visual_value_norms(prepared) if options.value_norms else None
        return span_region_features(model.attention_to_visual(prepared, trace.token_ids), trace.spans, token_matrix,
                                    region_pool, norms)
    attention, weighing = _captured(capture, trace, options)
    return span_region_features(attention, trace.spans, token_matrix, region_pool, **weighing, sign_weight=sign_weight)


def signed_feature_parts(model, prepared, trace: Trace, token_matrix: np.ndarray,
                         region_pool: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """(magnitude, signed) (n_spans, K, L·H) parts of a finished trace's direct-logit-signed features, from
    one captured pass: the span means of |x| and of x, so that the features at any β are magnitude + β·signed
    (what train-estimator keeps, to fit any β, or choose one, without collecting again)."""
    options = replace(capture_options({"features": "direct-logit-signed"}), on_device=False)
    capture = capture_trace(model, prepared, trace.token_ids, options)
    attention, weighing = _captured(capture, trace, options)
    return signed_span_parts(attention, trace.spans, token_matrix, region_pool, weighing["logit_values"],
                             weighing["token_scales"])


def _captured(capture, trace: Trace, options: CaptureOptions) -> tuple[np.ndarray, dict]:
    """A trace's (L, H, T, N) attention off its capture, and what weighs it as `span_region_features`'
    keyword arguments (value norms, logit values, token scales; None where the features' ``options``,
    `capture_options`, leave it out)."""
    n = len(trace.token_ids)
    return capture.attention(n), {
        "value_norms": capture.value_norms if options.value_norms else None,
        "logit_values": capture.logit_values(trace.token_ids) if options.logit_readout else None,
        "token_scales": capture.token_scales(0, n) if options.norm_scale else None}
