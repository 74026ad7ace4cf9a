"""Token Activation Map (Li et al., ICCV 2025, "Token Activation Map to Visually Explain Multimodal LLMs").

A class-activation map per generated token: the output head applied to the last layer's hidden state of
every visual token, read at the generated token's class — how strongly each visual token, on its own,
already points at that token. Two steps then clean it:

1. Estimated causal inference (ECI). Earlier text tokens leave their own visual activations behind, and
   a later token's map inherits them (a map for "fork" lighting up the plate mentioned before). Each
   earlier text token j has its own raw map (the visual activation of *its* class), and a weight: how
   strongly j's position activates the current token's class (its rectified logit there). The weighted
   mean of those maps estimates the interference; it is scaled by least squares onto the current map and
   subtracted, and the rest rectified. Earlier tokens with the current token's own id are left out.
2. The rank Gaussian filter: in each 3×3 neighbourhood of the visual-token grid the values are sorted and
   averaged with Gaussian weights over their ranks, centred on the median, whose width is the window's
   coefficient of variation (std / mean): flat neighbourhoods are smoothed broadly, one spiky value is
   outvoted by the median ranks.

Each token's map is min-max normalised together with its text activations (as the authors scale a map
before filtering), the span's tokens' maps are averaged and each region's tokens summed. Context tokens
are every text token of the prompt (chat-template tokens included: the adapter does not mark where the
question sits) and the trace before the token. One forward pass per sample, no gradients. Written from
the paper's description; the authors' code (github.com/xmed-lab/TAM) was read to check the details.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import AttributionContext, AttributionMethod


def rank_gaussian_filter(grid: np.ndarray, kernel_size: int = 3) -> np.ndarray:
    """Each cell: the sorted values of its kernel_size² neighbourhood (borders reflected) averaged with a
    Gaussian over rank offsets from the middle rank, σ = the window's std / mean. A window whose mean is
    not positive gives 0 (the maps are rectified: nothing is active there); a constant one gives its value."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    grid = np.asarray(grid, dtype=np.float64)
    pad = kernel_size // 2
    mode = "reflect" if min(grid.shape) > pad else "edge"  # reflect needs more cells than the padding
    windows = sliding_window_view(np.pad(grid, pad, mode=mode), (kernel_size, kernel_size))
    ranked = np.sort(windows.reshape(*grid.shape, kernel_size ** 2), axis=-1)
    mean, std = ranked.mean(-1, keepdims=True), ranked.std(-1, keepdims=True)
    offsets = np.arange(kernel_size ** 2) - kernel_size ** 2 // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where(mean > 0, std / mean, np.inf)
        kernel = np.where(sigma > 0, np.exp(-offsets ** 2 / (2 * np.square(sigma))), offsets == 0)
    kernel = kernel / kernel.sum(-1, keepdims=True)
    return np.where(mean[..., 0] > 0, (ranked * kernel).sum(-1), 0.0)


def remove_interference(raw_map: np.ndarray, context_maps: np.ndarray, context_weights: np.ndarray) -> np.ndarray:
    """Estimated causal inference for one token: ``raw_map`` (N,) minus the least-squares multiple of the
    interference (the ``context_weights``-weighted mean of ``context_maps`` (J, N)), rectified. With no
    weight (no context, or none activating the class) the raw map is returned."""
    total = context_weights.sum()
    if not len(context_weights) or total <= 0:
        return raw_map
    interference = context_weights @ context_maps / total
    norm = interference @ interference
    scale = (raw_map @ interference) / norm if norm > 0 else 0.0
    return np.maximum(raw_map - scale * interference, 0.0)


def _min_max(values: np.ndarray, also: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1] by the min and max over ``values`` and ``also`` together."""
    both = np.concatenate([values, also])
    low, high = both.min(), both.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def token_activation_maps(position_logits: np.ndarray, sequence_ids: np.ndarray, visual_positions: np.ndarray,
                          first_trace_position: int, grid: tuple[int, int], kernel_size: int = 3,
                          tokens=None) -> np.ndarray:
    """(T', N) TAM of trace tokens ``tokens`` (default all) from the (S, C) ``position_logits`` of the
    classes ``np.unique(sequence_ids[text positions])`` (sorted), ``sequence_ids`` (S,) the prompt + trace ids.
    Pure numpy: the method and the tests share it."""
    S = len(sequence_ids)
    classes = np.unique(sequence_ids[np.setdiff1d(np.arange(S), visual_positions)])
    if position_logits.shape != (S, len(classes)):
        raise ValueError(f"position_logits has shape {position_logits.shape}, expected ({S}, {len(classes)}): one "
                         "column per distinct text token id, sorted")
    column = {int(c): i for i, c in enumerate(classes)}
    active = np.maximum(position_logits, 0.0)  # activations are the rectified logits
    visual_maps = active[visual_positions]  # (N, C): the raw map of each class
    text_positions = np.setdiff1d(np.arange(S), visual_positions)
    text_columns = np.array([column[int(sequence_ids[p])] for p in text_positions])
    T = S - first_trace_position
    tokens = range(T) if tokens is None else tokens
    maps = []
    for t in tokens:
        position = first_trace_position + t
        own = column[int(sequence_ids[position])]
        earlier = text_positions < position
        weights = active[text_positions[earlier], own]  # how much each earlier text token activates this class
        # earlier tokens of one class share a map: their weights summed per class (same mean, O(C·N) a token)
        per_class = np.bincount(text_columns[earlier], weights=weights, minlength=len(classes))
        per_class[own] = 0.0  # the same word is not interference
        eci = remove_interference(visual_maps[:, own], visual_maps.T, per_class)
        scaled = _min_max(eci, weights)
        maps.append(rank_gaussian_filter(scaled.reshape(grid), kernel_size).ravel())
    return np.stack(maps) if maps else np.zeros((0, len(visual_positions)))


class TAMMethod(AttributionMethod):
    """Token Activation Map per trace token (class activations of the visual tokens, estimated causal
    inference, rank Gaussian filter), averaged over the span's tokens, summed per region."""

    name = "tam"
    kernel_size = 3

    def settings(self) -> dict:
        return {"kernel_size": self.kernel_size}

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        prepared, trace_ids = ctx.prepared, list(ctx.trace.token_ids)
        if not ctx.n_spans:
            return np.zeros((0, ctx.regions.k))
        rows, cols = prepared.visual_grid
        sequence = np.concatenate([np.asarray(prepared.inputs["input_ids"][0].tolist(), dtype=np.int64),
                                   np.asarray(trace_ids, dtype=np.int64)])
        visual = np.asarray(prepared.visual_positions)
        classes = np.unique(sequence[np.setdiff1d(np.arange(len(sequence)), visual)])
        logits = ctx.model.position_logits(prepared, trace_ids, classes.tolist())
        needed = sorted({t for s in ctx.trace.spans for t in range(s.start, s.end)})
        per_token = np.zeros((len(trace_ids), len(visual)))
        per_token[needed] = token_activation_maps(logits, sequence, visual, prepared.prompt_length, (rows, cols),
                                                  self.kernel_size, needed)
        return ctx.tokens_to_regions(ctx.per_span_mean(per_token))
