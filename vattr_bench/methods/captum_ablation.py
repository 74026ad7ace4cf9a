"""Captum's own pixel-space region ablation: ``LLMAttribution`` + ``FeatureAblation`` over an
``ImageMaskInput`` holding the same regions, the "absent" pixels set to the image's mean colour.
Under ``--ablation mean-fill`` it must agree with the harness's own ablation: a check on ours."""
from __future__ import annotations

import numpy as np
import torch

from ..models.prompting import build_prompt
from .base import AttributionContext, AttributionMethod


class CaptumAblation(AttributionMethod):
    name = "captum_ablation"

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        from captum.attr import FeatureAblation, ImageMaskInput, LLMAttribution

        model = ctx.model
        text = build_prompt(model.processor, ctx.prepared.prompt)
        labels = ctx.regions.label_map()
        outside = labels < 0  # pixels no region holds form one extra feature, dropped below
        labels[outside] = ctx.regions.k
        baseline = tuple(int(round(c)) for c in np.asarray(ctx.prepared.image).reshape(-1, 3).mean(0))
        inp = ImageMaskInput(
            image=ctx.prepared.image, mask=torch.as_tensor(labels), baseline=baseline,
            processor_fn=lambda img: model.processor(text=[text], images=[img], return_tensors="pt").to(model.device),
        )
        llm_attr = LLMAttribution(FeatureAblation(model.model), model.tokenizer)
        with torch.no_grad():
            result = llm_attr.attribute(inp, target=torch.as_tensor(ctx.trace.token_ids), forward_in_tokens=False)
        token_attr = result.token_attr.detach().cpu().numpy()[:, :ctx.regions.k]  # (T, K)
        return np.stack([token_attr[s.start:s.end].sum(0) for s in ctx.trace.spans])
