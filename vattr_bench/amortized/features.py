"""Attention features f_{S,k} ∈ R^(L·H): attention from span S's tokens to region k's visual tokens,
for every layer and head.

Pooling is explicit: over the span's tokens always the **mean** (spans differ in length); over the
region's tokens the **sum** by default (AT2: a source's attention mass, so bigger regions can matter
more) or the mean (``region_pool="mean"``).

``features="value-weighted"`` multiplies each head's attention to visual token n by ‖W_O^h v_n‖, how
much that head writes into the residual stream from n per unit of attention (Kobayashi et al. 2020):
still L·H features, the same estimator, one multiply more per span.

``features="logit-weighted"`` weighs each head's attention to visual token n by u_tᵀ W_O^h v_n, how far
what the head reads from n pushes the logit of the token y_t the row predicts (u_t: y_t's unembedding
row times the final norm's gain — the direct path through the logit lens), sums that over the region's
tokens and takes the magnitude per token: |Σ_{n∈k} a_{t,n} u_tᵀ W_O^h v_n|, mean over the span's tokens.
Signed contributions of a region's tokens can cancel, so the sum comes before the magnitude. Still L·H
features and the same linear estimator.

``features="direct-logit"``: the logit-weighted magnitude of each token over the rms of the residual the
final norm reads there (RMSNorm: γ·x/rms(x)), so that each is exactly what head h's read of region k adds
to y_t's logit along the direct path; the logit lens left that per-token scale out. Tokens whose residual
is small, where a head's write moves the logit more, weigh more in the span's mean.

``features="direct-logit-signed"``: the direct-logit per-token value x (signed, before the magnitude) read
as |x| + β·x, β = the estimator's ``sign_weight`` (0 is direct-logit; 1 keeps only what pushes y_t up,
twice): a head's read that raises the predicted token's logit weighs 1 + β, one that lowers it 1 − β.
Knocking out a region that raised y_t's logit lowers its log-prob, the effect the estimator fits; the
magnitude alone cannot tell the two apart. Still L·H features; β is chosen on training samples
(docs/estimator.md, "Keeping part of the sign").
"""
from __future__ import annotations

import numpy as np

from ..models.adapter import CaptureOptions

REGION_POOLS = ("sum", "mean")
FEATURES = ("attention", "value-weighted", "logit-weighted", "direct-logit", "direct-logit-signed")
LOGIT_FEATURES = ("logit-weighted", "direct-logit", "direct-logit-signed")  # read through the unembedding (`logit_values`)
NORM_SCALED_FEATURES = ("direct-logit", "direct-logit-signed")  # each token over its rms at the final norm (`token_scales`)


def feature_kind(meta: dict) -> str:
    """The features an estimator was trained on (files written before the option say "attention")."""
    kind = meta.get("features", "attention")
    if kind not in FEATURES:
        raise ValueError(f"estimator features {kind!r} unknown to this version; known: {FEATURES}")
    return kind


def feature_sign_weight(meta: dict) -> float:
    """β of |x| + β·x per token for direct-logit-signed features (``meta["sign_weight"]``, in [-1, 1]: beyond,
    a token's magnitude would count against it); 0 for every other kind."""
    if feature_kind(meta) != "direct-logit-signed":
        return 0.0
    beta = meta.get("sign_weight")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not -1 <= beta <= 1:
        raise ValueError(f"direct-logit-signed features need a 'sign_weight' between -1 and 1, got {beta!r}")
    return float(beta)


def feature_label(meta: dict) -> str:
    """The features an estimator reads, as a table header names them: the kind, and β where it has one."""
    kind = feature_kind(meta)
    return f"{kind}, β {feature_sign_weight(meta):g}" if kind == "direct-logit-signed" else kind


def capture_options(meta: dict) -> CaptureOptions:
    """What a model's attention capture must keep for an estimator's features (`capture_visual_attention`'s
    options); an estimator that uses some heads only (``meta["heads"]``) gets reads of those."""
    kind = feature_kind(meta)
    return CaptureOptions(value_norms=kind == "value-weighted", logit_readout=kind in LOGIT_FEATURES,
                          norm_scale=kind in NORM_SCALED_FEATURES, heads=meta.get("heads"))


def region_pool_matrix(token_matrix: np.ndarray, region_pool: str = "sum") -> np.ndarray:
    """(K, N) float64 map from per-visual-token values to per-region values: sum (AT2 sums over a
    source's parts) or mean over each region's tokens."""
    if region_pool not in REGION_POOLS:
        raise ValueError(f"unknown region pooling {region_pool!r}; choose from {REGION_POOLS}")
    pool = token_matrix.astype(np.float64)
    return pool / pool.sum(1, keepdims=True) if region_pool == "mean" else pool


def span_region_features(attention: np.ndarray, spans, token_matrix: np.ndarray, region_pool: str = "sum",
                         value_norms: np.ndarray | None = None, logit_values: np.ndarray | None = None,
                         token_scales: np.ndarray | None = None, sign_weight: float = 0.0) -> np.ndarray:
    """attention (L, H, T, N) from trace tokens to visual tokens -> (n_spans, K, L·H); with ``value_norms``
    (L, H, N), the value-weighted features; with ``logit_values`` (L, H, T, N) — u_tᵀ W_O^h v_n of the
    token each row predicts (`VisualAttentionCapture.logit_values`) — the logit-weighted ones, and with
    ``token_scales`` (T,) too — each row's 1/rms at the final norm (`token_scales`) — the direct-logit ones
    (with ``sign_weight`` β, the direct-logit-signed ones: |x| + β·x per token)."""
    L, H = attention.shape[:2]
    pool = region_pool_matrix(token_matrix, region_pool)
    if logit_values is not None:
        per_token = logit_weighted_per_token(attention, logit_values, pool, sign_weight)  # (L, H, T, K)
        if token_scales is not None:
            per_token = per_token * np.asarray(token_scales, dtype=per_token.dtype)[:, None]
        return span_token_means(per_token, spans)
    # float64 from here: float32 sums over span tokens and heads drift by ~1e-6 relative
    per_span = np.stack([attention[:, :, s.start:s.end].mean(2, dtype=np.float64) for s in spans])  # (S, L, H, N)
    if value_norms is not None:
        per_span = per_span * value_norms
    feats = np.einsum("slhn,kn->sklh", per_span, pool)  # (S, K, L, H)
    return feats.reshape(len(spans), pool.shape[0], L * H)


def span_token_means(per_token: np.ndarray, spans) -> np.ndarray:
    """(L, H, T, K) per-token features -> (n_spans, K, L·H): the mean over each span's tokens, in float64."""
    L, H, _, K = per_token.shape
    feats = np.stack([per_token[:, :, s.start:s.end].mean(2, dtype=np.float64) for s in spans])  # (S, L, H, K)
    return feats.transpose(0, 3, 1, 2).reshape(len(spans), K, L * H)


def logit_weighted_per_token(attention: np.ndarray, logit_values: np.ndarray, pool: np.ndarray,
                             sign_weight: float = 0.0) -> np.ndarray:
    """(L, H, T, K) |Σ_{n∈k} a_{t,n} u_tᵀW_O^h v_n| for (L, H, T, N) attention and logit values and a (K, N)
    `region_pool_matrix`: the magnitude per token, after the sum over the region's tokens; with
    ``sign_weight`` β, |x| + β·x of that sum x. In the inputs' precision (float32 from a capture: ~1e-6
    relative)."""
    signed = logit_signed_per_token(attention, logit_values, pool)
    if not sign_weight:
        return np.abs(signed, out=signed)
    per_token = np.abs(signed)
    per_token += signed * per_token.dtype.type(sign_weight)
    return per_token


def logit_signed_per_token(attention: np.ndarray, logit_values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """(L, H, T, K) x = Σ_{n∈k} a_{t,n} u_tᵀW_O^h v_n, signed (`logit_weighted_per_token` reads it)."""
    weighted = attention * logit_values
    # one 2-D product: a (…, N) @ (N, K) product broadcast over L, H runs one small gemm per head (2× the time)
    signed = weighted.reshape(-1, weighted.shape[-1]) @ pool.T.astype(weighted.dtype, copy=False)
    return signed.reshape(*weighted.shape[:-1], pool.shape[0])


def signed_span_parts(attention: np.ndarray, spans, token_matrix: np.ndarray, region_pool: str,
                      logit_values: np.ndarray, token_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(magnitude, signed) (n_spans, K, L·H): the span means of |x| and of x, x each token's direct-logit
    contribution (over its rms), so that direct-logit-signed features at any β are magnitude + β·signed
    (`span_region_features` with ``sign_weight`` β gives the same, one β at a time)."""
    x = logit_signed_per_token(attention, logit_values, region_pool_matrix(token_matrix, region_pool))
    x *= np.asarray(token_scales, dtype=x.dtype)[:, None]
    return span_token_means(np.abs(x), spans), span_token_means(x, spans)
