"""What the weighted features read the visual tokens' values with: per-head output-projection Gram matrices
(‖W_O^h v_n‖, the value-weighted features) and the logit readout (u_tᵀ W_O^h, the logit-weighted and
direct-logit features). Both depend on the weights only, so each is computed once per model."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from .arrays import to_numpy


# W_O^hᵀ W_O^h per attention module, computed once: attribution runs on frozen weights
_O_GRAMS: "weakref.WeakKeyDictionary[torch.nn.Module, np.ndarray]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def o_proj_gram(module, num_heads: int) -> np.ndarray:
    """(H, d, d) W_O^hᵀ W_O^h of one attention module, cached: computed on the module's device, so a big
    model pays H·d²·hidden once and only the (H, d, d) result comes over."""
    o_proj = getattr(module, "o_proj", None)
    if o_proj is None:
        raise ValueError(f"value-weighted features need the attention output projection `o_proj`; "
                         f"{type(module).__name__} has none (use an estimator trained with --features attention)")
    if module not in _O_GRAMS:
        w_o = o_proj.weight.float().reshape(o_proj.weight.shape[0], num_heads, -1)  # (hidden, H, d): heads concatenated
        _O_GRAMS[module] = to_numpy(torch.einsum("ohd,ohe->hde", w_o, w_o)).copy()
    return _O_GRAMS[module]


class LogitReadout:
    """What the logit-weighted features read visual values with (`VisualAttentionCapture.logit_values`):
    ``directions``, token ids -> (m, L·H·d) float32 W_O^hᵀu_t of every decoder head, layer-major (u_t: the
    token's unembedding row times the final norm's gain), wherever the weights live — numpy from CPU views
    of them, or torch tensors on the model's device (`HFVisionLanguageModel.logit_readout`), which stay there
    for a capture on the device and come to the host for one that is not; (m, F·d) for a readout of some
    heads only (`logit_readout(heads=…)`, for an estimator that uses those). One per model and head set:
    the rows it returns are kept per token id (`head_directions`)."""

    CACHE_BYTES = 256 * 2**20  # head directions kept per model; a 7 B model's take ~0.4 MB a token

    def __init__(self, directions: Callable[[list], np.ndarray]):
        self.directions = directions
        self._directions: dict[int, np.ndarray] = {}  # token id -> (L·H·d,) row of `head_directions`
        self._cached_bytes = 0

    def head_directions(self, token_ids: list) -> np.ndarray:
        """(m, L·H·d) W_O^hᵀ u_t of every head, layer-major: what head h's value vector is dotted with to give
        its push on token y_t's logit. Depends on the weights only, so kept per token id across captures
        (up to CACHE_BYTES; past it, tokens not yet kept are computed each time): it is an o_proj product
        per layer, L·hidden² a token, the biggest part of a new token's row on a big model."""
        missing = [t for t in dict.fromkeys(token_ids) if t not in self._directions]
        fresh: dict[int, np.ndarray] = {}
        if missing:
            computed = self.directions(missing)
            fresh = dict(zip(missing, computed))
            if self._cached_bytes + computed.nbytes <= self.CACHE_BYTES:
                self._directions.update(fresh)  # one dict update: concurrent streams at worst compute a row twice
                self._cached_bytes += computed.nbytes
        rows = [fresh[t] if t in fresh else self._directions[t] for t in token_ids]
        return np.stack(rows) if isinstance(rows[0], np.ndarray) else torch.stack(rows)

    @contextmanager
    def nothing_kept(self):
        """Inside: head directions computed as if none were kept yet, as in a process's first stream (kept
        again inside, as there); after: the ones kept before are back. `perf` times the first stream with it."""
        kept, self._directions, self._cached_bytes = (self._directions, self._cached_bytes), {}, 0
        try:
            yield
        finally:
            self._directions, self._cached_bytes = kept


def visual_value_norms(grams: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(…, H, N) ‖W_O^h v_n‖ for (…, H, N, d) visual value vectors and their (…, H, d, d) `o_proj_gram`s:
    how much head h writes into the residual stream per unit of attention to token n (Kobayashi et al.
    2020, "Attention is not only a weight"). Numpy only: it runs in the streaming worker."""
    # summed over d by a product with ones: numpy's own sum over a short last axis took ~5× longer here
    squared = (np.matmul(values, grams) * values) @ np.ones(values.shape[-1], values.dtype)
    return np.sqrt(np.maximum(squared, 0), dtype=np.float32)

