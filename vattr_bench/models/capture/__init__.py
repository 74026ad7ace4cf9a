"""Capture each new token's attention to the visual tokens, without the eager kernel.

Eager attention materialises every (query, key) weight of every layer — O(S²) per layer, and the slow
kernel for the whole run. The amortized features need much less: for each trace token, its weights to
the N visual tokens, every layer and head. Those are exactly

    w_n = exp(q · k_n · scale − lse),   lse = log Σ_j exp(q · k_j · scale)  over all keys j,

and a fused attention kernel computes the log-sum-exp anyway. So while a capture is active, the decoder's
attention runs through a fused kernel that hands the lse back — torch's flash kernel on the CPU; on CUDA
the one sdpa itself picks for the call, cuDNN, flash or memory-efficient — and the capture keeps
each new query row with its lse, and the visual keys once (they never change after the prompt). Turning
rows into weights is then O(L·H·N·d) per token, whatever the context length. Where no kernel fits (a
mask beyond causal, dropout, a window, another device) the lse comes from an explicit q·Kᵀ: still
exact, but O(S) per row and, on a GPU, a handful of extra kernel launches per layer and token. Each
kernel's lse is checked once per process against the explicit one (`backend.fused_with_lse`), so a kernel
that disagrees is never trusted.

The backend is registered with transformers' AttentionInterface under ``CAPTURE_BACKEND`` when the adapter
wraps a model (`register_backend`, not at import). An sdpa decoder runs on it from then on, a decoder on
another kernel only while a capture is open (`HFVisionLanguageModel.capture_visual_attention`); with no
capture active it is plain sdpa. Which capture a forward records into is a context variable (`activate`), so
threads that share one model — the live demo's streams — each fill their own capture. Assumes batch 1 with
no padding, which is how the adapter runs.

Three parts, one job each:
- `backend`: the attention backend and its fused kernels (what runs inside the forward pass);
- `buffer`: `VisualAttentionCapture`, the rows and their reads (weights, logit rows, value norms, scales);
- `readouts`: what the weighted features read values with, per model (o_proj Grams, `LogitReadout`).
"""
from .backend import CAPTURE_BACKEND, activate, final_norm_hook, register_backend
from .buffer import VisualAttentionCapture
from .readouts import LogitReadout, o_proj_gram, visual_value_norms

__all__ = ["CAPTURE_BACKEND", "LogitReadout", "VisualAttentionCapture", "activate", "final_norm_hook", "o_proj_gram",
           "register_backend", "visual_value_norms"]
