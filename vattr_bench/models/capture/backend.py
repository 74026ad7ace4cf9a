"""The attention backend a capture runs through: sdpa's output, plus the log-sum-exp of every decoder query
from a fused kernel that computes it anyway (or from an explicit q·Kᵀ where none fits), handed to the
capture active in the calling context."""
from __future__ import annotations

import warnings
from contextvars import ContextVar
from typing import TYPE_CHECKING, Callable

import torch
from torch.nn.attention import SDPBackend
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .arrays import grouped_matmul

if TYPE_CHECKING:
    from .buffer import VisualAttentionCapture

CAPTURE_BACKEND = "vattr_capture"
# the CPU flash kernel, through its direct binding where torch has one (the torch.ops path costs µs per call)
_cpu_flash = getattr(torch, "_scaled_dot_product_flash_attention_for_cpu", None) \
    or torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_active: ContextVar["VisualAttentionCapture | None"] = ContextVar("vattr_active_capture", default=None)


def explicit_lse(query, key, attention_mask, scale):
    """Exact log-sum-exp over the keys each query may see (any device, any mask)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    # grouped query heads share their kv head's K, rather than K repeated per query head: that copies the
    # whole cache ×groups
    scores = grouped_matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if attention_mask is None:  # causal, queries are the last q_len positions
        rows = torch.arange(kv_len - q_len, kv_len, device=query.device).unsqueeze(1)
        allowed = torch.arange(kv_len, device=query.device).unsqueeze(0) <= rows
    else:
        allowed = attention_mask[..., :kv_len] if attention_mask.dtype == torch.bool else attention_mask[..., :kv_len] > -1e30
    return torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), dim=-1)


# (device type, dtype, head dim, causal) -> whether the fused kernel runs there and its lse equals the explicit one
_FUSED_OK: dict[tuple, bool] = {}


def _cuda_fused(query, key, value, scale: float, causal: bool):
    """The kernel sdpa itself runs for this call (`torch._fused_sdp_choice`, asked as transformers' sdpa
    asks it: grouped K/V as they are, with enable_gqa), so the model's output under a capture is what it is
    without one: cuDNN, flash attention or the memory-efficient kernel, each of which hands back the lse;
    None where sdpa would run its math kernel. In bf16 another kernel's output differs in the last bits and
    the layers above magnify it: flash in every decode step, where sdpa ran cuDNN, moved vattr-tiny's
    layer-2 weights by up to 6% on an H200. One exception, in float32 only, kept from before grouped K/V went
    to the kernels as they are: where sdpa runs math because the memory-efficient kernel takes no grouped
    heads, that kernel runs on repeated K/V (outputs ~1e-7 apart; tests/test_cuda.py on an H200)."""
    groups = query.shape[1] // key.shape[1]
    choice = torch._fused_sdp_choice(query, key, value, None, 0.0, causal, scale=scale, enable_gqa=groups > 1)
    if choice == SDPBackend.MATH.value and groups > 1 and query.dtype == torch.float32:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        choice = torch._fused_sdp_choice(query, key, value, None, 0.0, causal, scale=scale)
    if choice == SDPBackend.CUDNN_ATTENTION.value:  # what sdpa runs for bf16/fp16 on Hopper (torch 2.11, H200)
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
            query, key, value, None, True, 0.0, causal, False, scale=scale)[:2]
        return out, lse.reshape(query.shape[:3])  # cuDNN's statistics come as (B, H, q, 1)
    if choice == SDPBackend.FLASH_ATTENTION.value:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, causal, scale=scale)[:2]
    if choice == SDPBackend.EFFICIENT_ATTENTION.value:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, 0.0, causal, scale=scale)[:2]
        return out, lse[..., :query.shape[2]]  # the kernel pads lse's rows to its block size
    return None


_FUSED_KERNELS = {"cpu": lambda q, k, v, scale, causal: _cpu_flash(q, k, v, 0.0, causal, scale=scale)[:2],
                  "cuda": _cuda_fused}


def fused_fits(query, key, attention_mask, dropout, kwargs) -> bool:
    """Whether a fused kernel computes exactly this call: no mask beyond causal (one query over the cache,
    or a full causal pass), no dropout, window or soft-capping, on a device with a kernel in _FUSED_KERNELS."""
    q_len, kv_len = query.shape[2], key.shape[2]
    return (query.device.type in _FUSED_KERNELS and attention_mask is None and not dropout and q_len in (1, kv_len)
            and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None)


def fused_with_lse(query, key, value, scale: float):
    """(B, q, H, d) output and (B, H, q) lse from the device's fused kernel, or None where none runs.
    The first call of each (device, dtype, head dim, causal) also computes the explicit lse and keeps the
    kernel only if the two agree: a kernel whose lse means something else (another base, other rows)
    falls back, with a warning, instead of giving wrong weights. Grouped-query K/V go to the kernel as they
    are, as sdpa passes them (CPU flash, CUDA cuDNN and flash read one kv head per group): repeated, they
    were a copy of the whole cache ×groups in every layer and step — 64 ms against sdpa's 4.3 ms for one
    layer call over 4,096 keys with Qwen2.5-VL-7B's 28 query / 4 kv heads on a 2-core CPU, 4.7 ms now
    (`python experiments/capture_call_cost.py`)."""
    causal = query.shape[2] > 1
    signature = (query.device.type, query.dtype, query.shape[-1], causal)
    trusted = _FUSED_OK.get(signature)
    if trusted is False:
        return None
    try:
        fused = _FUSED_KERNELS[query.device.type](query, key, value, scale, causal)
    except RuntimeError as e:  # e.g. a head dim or dtype the kernel does not take
        _FUSED_OK[signature] = False
        warnings.warn(f"attention capture: no fused kernel for {signature} ({e}); lse computed explicitly",
                      stacklevel=2)
        return None
    if fused is None:  # sdpa runs a kernel without lse for this call
        return None
    out, lse = fused
    if trusted is None:
        explicit = explicit_lse(query, key, None, scale)
        _FUSED_OK[signature] = trusted = bool(torch.allclose(lse.float(), explicit, rtol=1e-4, atol=1e-3))
        if not trusted:
            warnings.warn(f"attention capture: the fused kernel's lse for {signature} differs from q·Kᵀ's by up to "
                          f"{(lse.float() - explicit).abs().max().item():.3g}; lse computed explicitly", stacklevel=2)
            return None
    return out.transpose(1, 2).contiguous(), lse


def capturing_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """AttentionInterface backend: sdpa's output, and the lse of decoder queries while a capture is on."""
    capture = _active.get()
    layer = capture.layer_of.get(id(module)) if capture is not None else None
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    fused = fused_with_lse(query, key, value, scale) if fused_fits(query, key, attention_mask, dropout, kwargs) else None
    if fused is None:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        lse = explicit_lse(query, key, attention_mask, scale)
    else:
        out, lse = fused
    capture.record(layer, query, key, lse, scale, value)
    return out, None


def register_backend() -> None:
    """Register the backend (and sdpa's mask for it) with transformers under ``CAPTURE_BACKEND``: done by the
    adapter when it wraps a model, not at import, so importing vattr_bench changes nothing in transformers.
    Registering again replaces the entry with the same functions."""
    AttentionInterface.register(CAPTURE_BACKEND, capturing_attention)
    AttentionMaskInterface.register(CAPTURE_BACKEND, sdpa_mask)


def final_norm_hook(capture: VisualAttentionCapture) -> Callable:
    """A forward pre-hook for the decoder's final norm that hands its input to ``capture.record_residual`` only
    for forwards run where ``capture`` is the active one — the rule the attention backend follows. A module
    hook fires for every thread's forward through the module, and the model is shared (the live demo's
    streams): unscoped, each open capture took every other stream's residuals as its own rows' 1/rms."""
    def hook(module, args):
        if _active.get() is capture:
            capture.record_residual(args[0])
    return hook


class activate:
    """Context manager: make ``capture`` the one the backend records into (this thread/context only). The
    capture state is per context on purpose: concurrent generations on one model (one per thread) each
    record into their own capture; nothing a capture holds is shared with another."""

    def __init__(self, capture: VisualAttentionCapture):
        self.capture = capture

    def __enter__(self):
        self._token = _active.set(self.capture)
        return self.capture

    def __exit__(self, *exc):
        _active.reset(self._token)
