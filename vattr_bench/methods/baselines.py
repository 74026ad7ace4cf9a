"""Built-in baselines that need no gradients: exhaustive ablation (the reference), raw attention, rollout, and
the null baselines random, uniform and region_area."""
from __future__ import annotations

import zlib

import numpy as np

from .base import AttributionContext, AttributionMethod


class Ablation(AttributionMethod):
    """Exhaustive single-region ablation: the reference. Scores 1.0 on single-region metrics by
    construction, not on subset metrics (regions interact)."""

    name = "ablation"
    reads_ground_truth = True

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        return ctx.ablation_effects()


class Attention(AttributionMethod):
    """Raw attention from the span's tokens to the region's visual tokens, mean over all layers and
    heads (mean over the span's tokens, summed over the region's tokens)."""

    name = "attention"
    layers = slice(None)

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        attn = ctx.attention_to_visual()[self.layers].mean(axis=(0, 1))  # (T, N)
        return ctx.tokens_to_regions(ctx.per_span_mean(attn))


class AttentionLast(Attention):
    """As ``attention``, last decoder layer only."""

    name = "attention_last"
    layers = slice(-1, None)


class Rollout(AttributionMethod):
    """Attention rollout (Abnar & Zuidema 2020) through the decoder: head-averaged attention plus the
    residual identity, row-normalised, multiplied layer by layer; read from the rows that predict the
    span's tokens to the visual-token columns."""

    name = "rollout"

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        maps = ctx.model.attention_matrices(ctx.prepared, ctx.trace.token_ids).mean(axis=1)  # (L, S, S)
        eye = np.eye(maps.shape[-1])
        rollout = eye
        for layer in maps:
            a = 0.5 * layer + 0.5 * eye
            rollout = (a / a.sum(-1, keepdims=True)) @ rollout
        P, T = ctx.prepared.prompt_length, len(ctx.trace.token_ids)
        to_visual = rollout[P - 1:P - 1 + T][:, ctx.prepared.visual_positions]  # (T, N)
        return ctx.tokens_to_regions(ctx.per_span_mean(to_visual))


class Random(AttributionMethod):
    """Seeded Gaussian scores: the floor every method must beat."""

    name = "random"
    reference = True

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        rng = np.random.default_rng([ctx.seed, zlib.crc32(ctx.sample.id.encode())])
        return rng.standard_normal((ctx.n_spans, ctx.regions.k))


class Uniform(AttributionMethod):
    """The same score for every region: no information at all. Its correlations with the truth are 0 by
    definition (counted, never dropped); its LDS is not 0 but the subset-size floor — a subset's predicted
    effect is then its number of regions, and removing more regions costs more."""

    name = "uniform"
    reference = True

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        return np.ones((ctx.n_spans, ctx.regions.k))


class RegionArea(AttributionMethod):
    """Score = the region's size in visual tokens, for every span: what "bigger regions matter more" alone
    explains, with no look at the model's reasoning. A method worth its cost should beat it; the size-controlled
    metric ``r2_partial_size`` removes this part from every method."""

    name = "region_area"
    reference = True

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        return np.tile(ctx.region_sizes(), (ctx.n_spans, 1))
