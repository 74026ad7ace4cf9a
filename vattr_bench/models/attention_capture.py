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
        # per layer, per forward call: (query (1, H, q, d), lse (1, H, q), first row to keep)
        self._chunks: list[list[tuple[torch.Tensor, torch.Tensor, int]]] = [[] for _ in range(self.num_layers)]
        self._keys_t: np.ndarray | None = None

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
        if lo < q_len:  # kept as the kernel returned them; sliced only when read (per-token cost matters)
            self._chunks[layer].append((query, lse, lo))

    # -- read out ------------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        """Forward calls recorded so far (one per decode step while generating)."""
        return len(self._chunks[0])

    def chunks(self, first: int = 0, last: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, H, r, d) queries and (L, H, r) lse of the rows in chunks [first, last) — no weights yet.
        Every forward appends one chunk per layer, so chunk i covers the same rows in every layer."""
        picked = [layer[first:last] for layer in self._chunks]
        whole = all(lo == 0 for _, _, lo in picked[0])  # decode steps: one cat per layer, no slicing

        def rows(i):
            if whole:
                return torch.cat([t for t, _, _ in picked[i]], dim=2)[0]
            return torch.cat([t[0, :, lo:] for t, _, lo in picked[i]], dim=1)

        def lse(i):
            if whole:
                return torch.cat([x for _, x, _ in picked[i]], dim=2)[0]
            return torch.cat([x[0, :, lo:] for _, x, lo in picked[i]], dim=1)

        layers = range(self.num_layers)
        return torch.stack([rows(i) for i in layers]).detach(), torch.stack([lse(i) for i in layers]).detach()

    def raw(self, n_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Captured (L, H, r, d) queries and (L, H, r) lse for the first ``n_rows`` rows."""
        queries, lse = self.chunks()
        return queries[:, :, :n_rows], lse[:, :, :n_rows]

    def weights(self, queries: torch.Tensor, lse: torch.Tensor) -> np.ndarray:
        """(L, H, r, d) queries + (L, H, r) lse -> (L, H, r, N) attention weights to the visual tokens.

        In numpy on purpose: a streaming worker calls this from its own thread, and torch ops there
        would start a second OpenMP pool competing with generation for the cores."""
        if self._keys_t is None:  # K_vis as (L, H, d, N), once: the visual keys never change
            self._keys_t = torch.stack(self.visual_keys).float().transpose(-1, -2).cpu().numpy()
            self._scale = np.asarray(self.scale, dtype=np.float32).reshape(-1, 1, 1, 1)
        # (q·k)·scale in that order, as the eager kernel rounds it (scores reach tens: order shows at 1e-5)
        scores = np.matmul(queries.float().cpu().numpy(), self._keys_t)
        scores *= self._scale
        scores -= lse.float().cpu().numpy()[..., None]
        return np.exp(scores, out=scores)

    def attention(self, n_rows: int | None = None) -> np.ndarray:
        """(L, H, T, N) weights for the first ``n_rows`` captured rows (all by default)."""
        return self.weights(*self.raw(n_rows))


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


def _cpu_flash_fits(query, key, attention_mask, dropout, kwargs) -> bool:
    """Whether torch's CPU flash kernel computes exactly this call: no mask beyond causal (one query over
    the cache, or a full causal pass), no dropout, window or soft-capping."""
    q_len, kv_len = query.shape[2], key.shape[2]
    return (query.device.type == "cpu" and attention_mask is None and not dropout and q_len in (1, kv_len)
            and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None)


def capturing_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """AttentionInterface backend: sdpa's output, and the lse of decoder queries while a capture is on."""
    capture = _active.get()
    layer = capture.layer_of.get(id(module)) if capture is not None else None
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if _cpu_flash_fits(query, key, attention_mask, dropout, kwargs):
        groups = query.shape[1] // key.shape[1]
        q_len = query.shape[2]
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
