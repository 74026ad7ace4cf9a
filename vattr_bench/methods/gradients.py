"""Gradient baselines through Captum, attributing to the visual-token embeddings the decoder receives,
one backward pass (or n_steps for integrated gradients) per span, aggregated per region.

Captum's ``LLMGradientAttribution`` attributes to *text* token inputs (``TextTokenInput`` through the
embedding layer); visual tokens enter the decoder after that layer, so it does not fit. Its core
``Saliency`` / ``InputXGradient`` / ``IntegratedGradients`` are used on the visual embeddings instead,
with the span's summed log-prob as the target.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import AttributionContext, AttributionMethod


class _CaptumOnVisualEmbeddings(AttributionMethod):
    def _captum(self, forward):
        raise NotImplementedError

    def _attribute_kwargs(self, embeds: torch.Tensor) -> dict:
        return {}

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        embeds = torch.as_tensor(ctx.model.visual_features(ctx.prepared), device=ctx.model.device)
        embeds = embeds.unsqueeze(0).requires_grad_(True)  # (1, N, D), on the model's device
        ids = ctx.trace.token_ids
        token_scores = []
        for span in ctx.trace.spans:
            def span_logprob(visual, span=span):
                return ctx.model.logprobs_from_visual_embeddings(ctx.prepared, ids, visual)[:, span.start:span.end].sum(1)
            attr = self._captum(span_logprob).attribute(embeds, **self._attribute_kwargs(embeds))
            token_scores.append(attr[0].sum(-1).detach().cpu().numpy())
        return ctx.tokens_to_regions(np.stack(token_scores))


class SaliencyMethod(_CaptumOnVisualEmbeddings):
    """|∂ log p(S) / ∂ e_n| summed over the embedding dimension."""

    name = "saliency"

    def _captum(self, forward):
        from captum.attr import Saliency

        return Saliency(forward)

    def _attribute_kwargs(self, embeds):
        return {"abs": True}


class InputXGradientMethod(_CaptumOnVisualEmbeddings):
    """e_n · ∂ log p(S) / ∂ e_n."""

    name = "input_x_gradient"

    def _captum(self, forward):
        from captum.attr import InputXGradient

        return InputXGradient(forward)


class IntegratedGradientsMethod(_CaptumOnVisualEmbeddings):
    """Integrated gradients from all-zero visual embeddings, 16 steps."""

    name = "integrated_gradients"
    n_steps = 16

    def _captum(self, forward):
        from captum.attr import IntegratedGradients

        return IntegratedGradients(forward)

    def _attribute_kwargs(self, embeds):
        return {"baselines": torch.zeros_like(embeds.detach()), "n_steps": self.n_steps, "internal_batch_size": self.n_steps}
