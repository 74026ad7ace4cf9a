"""An example attribution-method plugin: the strongest head instead of the mean over heads.

Run it like any built-in:

    vattr-bench evaluate --method submissions/example_method.py:MaxHeadAttention,attention --limit 5
"""
import numpy as np


class MaxHeadAttention:
    """Attention from the span's tokens to each region, from the single layer/head that attends to the
    visual tokens most strongly for this span."""

    name = "max_head_attention"

    def attribute(self, ctx) -> np.ndarray:
        attn = ctx.attention_to_visual()  # (L, H, T, N)
        per_span = np.stack([attn[:, :, s.start:s.end].mean(2) for s in ctx.trace.spans])  # (S, L, H, N)
        flat = per_span.reshape(per_span.shape[0], -1, per_span.shape[-1])  # (S, L*H, N)
        best = flat.sum(-1).argmax(1)  # the head with most mass on visual tokens, per span
        token_scores = flat[np.arange(len(best)), best]  # (S, N)
        return ctx.tokens_to_regions(token_scores)
