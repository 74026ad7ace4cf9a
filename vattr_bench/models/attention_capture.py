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

import weakref
from contextvars import ContextVar

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAPTURE_BACKEND = "vattr_capture"
# the CPU flash kernel, through its direct binding where torch has one (the torch.ops path costs µs per call)
_cpu_flash = getattr(torch, "_scaled_dot_product_flash_attention_for_cpu", None) \
    or torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_active: ContextVar["VisualAttentionCapture | None"] = ContextVar("vattr_active_capture", default=None)


class VisualAttentionCapture:
    """Rows of the decoder's attention to the visual keys, for query positions ≥ ``first_row``: row r is
    the query at position first_row + r (with the default first_row, the one that predicts trace token r).

    ``layer_of`` maps each decoder attention module to its layer index; other attention modules (the
    vision tower's) pass straight through. Inside the forward pass a layer only keeps a reference to its
    query and lse tensors (fresh tensors, never written again); `flush` moves what has accumulated into
    float32 numpy buffers, a run of decode steps with one `torch.cat` and one numpy conversion each for
    queries and lse. Converting per layer and step instead cost ~30 µs a call inside generation on the
    CPU, ~120 µs per vattr-tiny decode step (measured in place, one-off). Reading a span's rows is then a
    slice. Rows count (``n_rows``) once flushed: the streamer flushes when a span closes, the capture
    context when it exits. On a GPU the flush is one device-to-host copy per run of steps.
    """

    INITIAL_ROWS = 256  # buffer rows at first; doubled whenever a trace outgrows them

    def __init__(self, layer_of: dict[int, int], visual_positions: np.ndarray, first_row: int, value_norms: bool = False):
        """``value_norms``: also keep, per layer, ‖W_O^h v_n‖ of every head and visual token (the value-weighted
        features' factor; see `visual_value_norms`)."""
        self.layer_of = layer_of
        self.num_layers = len(layer_of)
        self.visual_positions = torch.as_tensor(np.asarray(visual_positions), dtype=torch.long)
        self.first_row = first_row
        self.visual_keys: list[torch.Tensor | None] = [None] * self.num_layers  # (H, N, d) per layer
        self.scale: list[float] = [1.0] * self.num_layers
        self._queries: np.ndarray | None = None  # (L, H, capacity, d)
        self._lse: np.ndarray | None = None  # (L, H, capacity)
        self.n_rows = 0  # rows flushed in every layer so far
        self._pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (layer, key length, query, lse)
        self._keys_t: np.ndarray | None = None
        self._value_norms: list[np.ndarray | None] | None = [None] * self.num_layers if value_norms else None

    # -- called from inside the attention backend --------------------------------------------------
    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, scale: float,
               module=None, value: torch.Tensor | None = None) -> None:
        if self.visual_keys[layer] is None:  # the layer's first call: the prompt, visual tokens included
            groups = query.shape[1] // key.shape[1]
            vis = self.visual_positions.to(key.device)
            self.visual_keys[layer] = repeat_kv(key[:, :, vis], groups)[0].detach()
            self.scale[layer] = scale
            if self._value_norms is not None:
                self._value_norms[layer] = visual_value_norms(module, repeat_kv(value[:, :, vis], groups)[0])
        self._pending.append((layer, key.shape[2], query, lse))

    def flush(self) -> None:
        """Write every recorded call's rows into the buffers (the producer's thread: torch ops)."""
        pending, self._pending = self._pending, []
        L, i = self.num_layers, 0
        while i < len(pending):
            steps = _decode_steps(pending, i, L)
            if steps:  # a run of decode steps: L calls of one query each, at consecutive positions
                chunk = pending[i:i + steps * L]
                r0 = chunk[0][1] - 1 - self.first_row
                if r0 >= 0:
                    queries = _numpy(torch.cat([c[2] for c in chunk], dim=2))[0]  # (H, steps·L, d), step-major
                    lse = _numpy(torch.cat([c[3] for c in chunk], dim=2))[0]
                    H, d = queries.shape[0], queries.shape[-1]
                    self._write(slice(None), r0, queries.reshape(H, steps, L, d).transpose(2, 0, 1, 3),
                                lse.reshape(H, steps, L).transpose(2, 0, 1))
                    i += steps * L
                    continue
            layer, kv_len, query, lse = pending[i]
            q_len = query.shape[2]
            first = kv_len - q_len  # absolute position of this call's first query (batch 1, no padding)
            lo = max(self.first_row - first, 0)
            if lo < q_len:
                self._write(layer, first + lo - self.first_row, _numpy(query)[0, :, lo:], _numpy(lse)[0, :, lo:])
            i += 1

    def _write(self, layers, r0: int, queries: np.ndarray, lse: np.ndarray) -> None:
        """Rows r0… of ``layers`` (one index, or a slice of all); n_rows moves once the last layer has them."""
        r1 = r0 + queries.shape[-2]
        if self._queries is None or r1 > self._queries.shape[2]:
            self._grow(r1, queries.shape[-3], queries.shape[-1])
        self._queries[layers, :, r0:r1] = queries
        self._lse[layers, :, r0:r1] = lse
        if layers == slice(None) or layers == self.num_layers - 1:
            self.n_rows = max(self.n_rows, r1)

    def _grow(self, rows: int, heads: int, dim: int) -> None:
        """Room for at least ``rows`` rows, doubling. Rows are written once and copied before the swap,
        so a reader holding the old buffers still reads every row recorded before it."""
        capacity = max(self.INITIAL_ROWS, rows, 2 * (0 if self._queries is None else self._queries.shape[2]))
        queries = np.empty((self.num_layers, heads, capacity, dim), np.float32)
        lse = np.empty((self.num_layers, heads, capacity), np.float32)
        if self._queries is not None:
            n = self._queries.shape[2]
            queries[:, :, :n], lse[:, :, :n] = self._queries, self._lse
        self._queries, self._lse = queries, lse

    # -- read out ------------------------------------------------------------------------------------
    def rows(self, first: int = 0, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(L, H, r, d) queries and (L, H, r) lse of flushed rows [first, last) — views, no weights yet.
        No torch op: the streaming worker calls this from its own thread, where torch ops would start
        a second OpenMP pool competing with generation for the cores."""
        last = self.n_rows if last is None else min(last, self.n_rows)
        if first >= last:
            raise ValueError(f"no captured rows in [{first}, {last}); {self.n_rows} flushed")
        return self._queries[:, :, first:last], self._lse[:, :, first:last]

    def weights(self, queries: np.ndarray, lse: np.ndarray) -> np.ndarray:
        """(L, H, r, d) queries + (L, H, r) lse -> (L, H, r, N) attention weights to the visual tokens,
        in numpy for the same reason as `rows`."""
        if self._keys_t is None:  # K_vis as (L, H, d, N), once: the visual keys never change
            self._keys_t = np.ascontiguousarray(np.stack([_numpy(k) for k in self.visual_keys]).swapaxes(-1, -2))
            self._scale = np.asarray(self.scale, dtype=np.float32).reshape(-1, 1, 1, 1)
        # (q·k)·scale in that order, as the eager kernel rounds it (scores reach tens: order shows at 1e-5)
        scores = np.matmul(queries, self._keys_t)
        scores *= self._scale
        scores -= lse[..., None]
        return np.exp(scores, out=scores)

    @property
    def value_norms(self) -> np.ndarray:
        """(L, H, N) ‖W_O^h v_n‖, once the prompt has been through every layer."""
        if self._value_norms is None or any(v is None for v in self._value_norms):
            raise RuntimeError("no value norms: open the capture with value_norms=True and run the prompt through it")
        return np.stack(self._value_norms)

    def attention(self, n_rows: int | None = None) -> np.ndarray:
        """(L, H, T, N) weights for the first ``n_rows`` captured rows (all by default)."""
        return self.weights(*self.rows(0, n_rows))


# W_O^hᵀ W_O^h per attention module, computed once: attribution runs on frozen weights
_O_GRAMS: "weakref.WeakKeyDictionary[torch.nn.Module, np.ndarray]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def visual_value_norms(module, values: torch.Tensor) -> np.ndarray:
    """(H, N) ‖W_O^h v_n‖ for one layer's (H, N, d) visual value vectors: how much head h writes into the
    residual stream per unit of attention to token n (Kobayashi et al. 2020, "Attention is not only a
    weight"). Through the Gram matrices W_O^hᵀ W_O^h (cached per module), so a big model pays H·N·d² per
    layer and stream, not H·N·d·hidden."""
    o_proj = getattr(module, "o_proj", None)
    if o_proj is None:
        raise ValueError(f"value-weighted features need the attention output projection `o_proj`; "
                         f"{type(module).__name__} has none (use an estimator trained with --features attention)")
    H, _, d = values.shape
    if module not in _O_GRAMS:  # once per module, on its device: only the (H, d, d) result comes over
        w_o = o_proj.weight.float().reshape(-1, H, d)  # (hidden, H, d): o_proj reads the heads concatenated
        _O_GRAMS[module] = _numpy(torch.einsum("ohd,ohe->hde", w_o, w_o)).astype(np.float64)
    # per stream in numpy: a torch einsum here cost the prompt pass ~4 ms on vattr-tiny (one-off timing)
    v = _numpy(values).astype(np.float64)
    squared = (np.matmul(v, _O_GRAMS[module]) * v).sum(-1)
    return np.sqrt(np.maximum(squared, 0)).astype(np.float32)


def _decode_steps(pending: list, i: int, num_layers: int) -> int:
    """How many whole decode steps start at pending[i]: calls of one query for layers 0…L-1 in order,
    each step's key one longer than the last's."""
    steps = 0
    while i + (steps + 1) * num_layers <= len(pending):
        kv = pending[i + steps * num_layers][1]
        if steps and kv != pending[i + (steps - 1) * num_layers][1] + 1:
            break
        for layer in range(num_layers):
            c = pending[i + steps * num_layers + layer]
            if c[0] != layer or c[1] != kv or c[2].shape[2] != 1:
                return steps
        steps += 1
    return steps


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float32 numpy: a view of a float32 CPU tensor without grad — the per-decode-step case, so tried
    first and without torch ops — else a converted copy (grad, bf16, GPU)."""
    if t.dtype == torch.float32:
        try:
            return t.numpy()
        except (RuntimeError, TypeError):  # needs grad, or not on the CPU
            pass
    return t.detach().float().cpu().numpy()


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
        out, lse = _cpu_flash(
            query, repeat_kv(key, groups), repeat_kv(value, groups), 0.0, q_len > 1, scale=scale)
        out = out.transpose(1, 2).contiguous()
    else:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        lse = _lse_explicit(query, key, attention_mask, scale)
    capture.record(layer, query, key, lse, scale, module, value)
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
