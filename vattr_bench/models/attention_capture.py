"""Capture each new token's attention to the visual tokens, without the eager kernel.

Eager attention materialises every (query, key) weight of every layer — O(S²) per layer, and the slow
kernel for the whole run. The amortized features need much less: for each trace token, its weights to
the N visual tokens, every layer and head. Those are exactly

    w_n = exp(q · k_n · scale − lse),   lse = log Σ_j exp(q · k_j · scale)  over all keys j,

and a flash-style kernel computes the log-sum-exp anyway. So while a capture is active, the decoder's
attention runs through torch's CPU flash kernel (same output as sdpa), which hands back the lse; the
capture keeps each new query row with its lse, and the visual keys once (they never change after the
prompt). Turning rows into weights is then O(L·H·N·d) per token, whatever the context length.
Elsewhere (a GPU, or a mask the kernel cannot take) the lse comes from an explicit q·Kᵀ: still exact,
but O(S) per row.

The backend is registered with transformers' AttentionInterface under ``CAPTURE_BACKEND`` and only
switched on for the duration of a capture (`HFVisionLanguageModel.capture_visual_attention`); with no
capture active it is plain sdpa. Assumes batch 1 with no padding, which is how the adapter runs.
"""
from __future__ import annotations

from contextvars import ContextVar

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAPTURE_BACKEND = "vattr_capture"
_active: ContextVar["VisualAttentionCapture | None"] = ContextVar("vattr_active_capture", default=None)


class VisualAttentionCapture:
    """Rows of the decoder's attention to the visual keys, for query positions ≥ ``first_row``.

    ``layer_of`` maps each decoder attention module to its layer index; other attention modules (the
    vision tower's) pass straight through.
    """

    def __init__(self, layer_of: dict[int, int], visual_positions: np.ndarray, first_row: int):
        self.layer_of = layer_of
        self.num_layers = len(layer_of)
        self.visual_positions = torch.as_tensor(np.asarray(visual_positions), dtype=torch.long)
        self.first_row = first_row
        self.visual_keys: list[torch.Tensor | None] = [None] * self.num_layers  # (H, N, d) per layer
        self.scale: list[float] = [1.0] * self.num_layers
        self._queries: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers)]  # (H, r, d) chunks
        self._lse: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers)]  # (H, r) chunks
        self._taken = 0  # chunks already handed out by take()

    # -- called from inside the attention backend --------------------------------------------------
    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, scale: float) -> None:
        q_len, kv_len = query.shape[2], key.shape[2]
        first = kv_len - q_len  # absolute position of this call's first query (batch 1, no padding)
        if self.visual_keys[layer] is None:
            groups = query.shape[1] // key.shape[1]
            vis = self.visual_positions.to(key.device)
            self.visual_keys[layer] = repeat_kv(key[:, :, vis], groups)[0].detach()
            self.scale[layer] = scale
        lo = max(self.first_row - first, 0)
        if lo < q_len:
            self._queries[layer].append(query[0, :, lo:].detach())
            self._lse[layer].append(lse[0, :, lo:].detach())

    # -- read out ------------------------------------------------------------------------------------
    def _stack(self, first_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        # every forward appends one chunk per layer, so chunk i covers the same rows in every layer
        queries = torch.stack([torch.cat(q[first_chunk:], dim=1) for q in self._queries])
        lse = torch.stack([torch.cat(x[first_chunk:], dim=1) for x in self._lse])
        return queries, lse

    def raw(self, n_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Captured (L, H, r, d) queries and (L, H, r) lse for the first ``n_rows`` rows — no weights yet."""
        queries, lse = self._stack()
        return queries[:, :, :n_rows], lse[:, :, :n_rows]

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows captured since the last ``take`` (a producer handing work to a consumer)."""
        first, self._taken = self._taken, len(self._queries[0])
        if self._taken == first + 1:  # a decode step: one chunk per layer, one stack (cheap per token)
            return torch.stack([q[-1] for q in self._queries]), torch.stack([x[-1] for x in self._lse])
        return self._stack(first)

    def weights(self, queries: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        """(L, H, r, d) queries + (L, H, r) lse -> (L, H, r, N) attention weights to the visual tokens."""
        keys = torch.stack(self.visual_keys)  # (L, H, N, d)
        scale = torch.as_tensor(self.scale, dtype=torch.float32, device=keys.device).view(-1, 1, 1, 1)
        scores = torch.matmul(queries.float(), keys.float().transpose(-1, -2)) * scale
        return torch.exp(scores - lse.float().unsqueeze(-1))

    def attention(self, n_rows: int | None = None) -> np.ndarray:
        """(L, H, T, N) weights for the first ``n_rows`` captured rows (all by default)."""
        return self.weights(*self.raw(n_rows)).cpu().numpy()


def _lse_explicit(query, key, attention_mask, scale):
    """Exact log-sum-exp over the keys each query may see (any device, any mask)."""
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None:  # causal, queries are the last q_len positions
        rows = torch.arange(kv_len - q_len, kv_len, device=query.device).unsqueeze(1)
        allowed = torch.arange(kv_len, device=query.device).unsqueeze(0) <= rows
    else:
        allowed = attention_mask[..., :kv_len] if attention_mask.dtype == torch.bool else attention_mask[..., :kv_len] > -1e30
    return torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def capturing_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """AttentionInterface backend: sdpa's output, and the lse of decoder queries while a capture is on."""
    capture = _active.get()
    layer = capture.layer_of.get(id(module)) if capture is not None else None
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q_len, kv_len = query.shape[2], key.shape[2]
    plain = attention_mask is None and not dropout and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None
    if plain and query.device.type == "cpu" and q_len in (1, kv_len):
        groups = query.shape[1] // key.shape[1]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, repeat_kv(key, groups), repeat_kv(value, groups), 0.0, q_len > 1, scale=scale)
        out = out.transpose(1, 2).contiguous()
    else:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        lse = _lse_explicit(query, key, attention_mask, scale)
    capture.record(layer, query, key, lse, scale)
    return out, None


AttentionInterface.register(CAPTURE_BACKEND, capturing_attention)
AttentionMaskInterface.register(CAPTURE_BACKEND, sdpa_mask)


class activate:
    """Context manager: make ``capture`` the one the backend records into (this thread/context only)."""

    def __init__(self, capture: VisualAttentionCapture):
        self.capture = capture

    def __enter__(self):
        self._token = _active.set(self.capture)
        return self.capture

    def __exit__(self, *exc):
        _active.reset(self._token)
