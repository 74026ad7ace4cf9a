"""Ablation operators and the ground truth they give (defined in docs/methodology.md).

Δ_k(S) = Σ_{t∈S} [log p(y_t | x, y<t) − log p(y_t | ablate(x, R_k), y<t)], teacher-forced on the
model's own trace: one pass per region, all spans at once. For a subset v of regions, Δ(S, v) removes
all regions of v together.

Operators: ``knockout`` (default): the region's visual tokens are removed as attention keys for every
query after them — text tokens and the other visual tokens alike — so nothing downstream reads the region,
directly or through a later visual token; positions are kept, so nothing shifts. ``mean-fill`` (the region's
pixels become the image's mean colour), ``blur`` (the region's pixels become a Gaussian blur of the image).
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..models.adapter import PreparedInput, VisionLanguageModel
from ..types import Regions, Trace

OPERATORS = ("knockout", "mean-fill", "blur")
BLUR_RADIUS = 4


def ablate_image(image: Image.Image, pixel_mask: np.ndarray, operator: str) -> Image.Image:
    pixels = np.asarray(image).copy()
    if operator == "mean-fill":
        fill = np.round(pixels.reshape(-1, 3).mean(0))  # rounded like Captum's RGB baseline
    elif operator == "blur":
        fill = np.asarray(image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))[pixel_mask]
    else:
        raise ValueError(f"unknown pixel ablation operator {operator!r}; choose from {', '.join(OPERATORS)}")
    pixels[pixel_mask] = fill
    return Image.fromarray(pixels)


def logprobs_without(model: VisionLanguageModel, prepared: PreparedInput, trace: Trace, regions: Regions,
                     removed: np.ndarray, operator: str) -> np.ndarray:
    """Teacher-forced log-probs of the trace, (B, T), row b with the regions flagged in removed[b] ablated.
    ``removed`` is (B, K) bool; the rows go through the model as batches."""
    removed = np.atleast_2d(np.asarray(removed, dtype=bool))
    if operator == "knockout":
        tokens = (removed.astype(np.int64) @ regions.token_matrix.astype(np.int64)) > 0  # (B, N)
        return model.token_logprobs(prepared, trace.token_ids, knockout=tokens)
    if operator not in OPERATORS:
        raise ValueError(f"unknown ablation operator {operator!r}; choose from {', '.join(OPERATORS)}")
    images = [ablate_image(prepared.image, regions.pixel_masks[row].any(0), operator) for row in removed]
    return model.token_logprobs(prepared, trace.token_ids, image=images)


def span_matrix(trace: Trace) -> np.ndarray:
    """(T, n_spans) indicator: which tokens each span holds."""
    m = np.zeros((len(trace.token_ids), len(trace.spans)))
    for j, s in enumerate(trace.spans):
        m[s.start:s.end, j] = 1.0
    return m


def span_logprob_drop(model, prepared, trace, regions, removed, operator) -> np.ndarray:
    """(B, n_spans) log-prob each span loses with removed[b] ablated; (n_spans,) for a single (K,) mask."""
    single = np.ndim(removed) == 1
    # metrics ask for the same mask many times (e.g. "all removed" once per span): run each one once
    unique, inverse = np.unique(np.atleast_2d(np.asarray(removed, dtype=bool)), axis=0, return_inverse=True)
    ablated = logprobs_without(model, prepared, trace, regions, unique, operator)[inverse.reshape(-1)]
    drop = (trace.logprobs[None, :] - ablated) @ span_matrix(trace)
    return drop[0] if single else drop


def single_region_effects(model, prepared, trace, regions: Regions, operator: str = "knockout") -> np.ndarray:
    """Δ, shape (n_spans, K): exhaustive single-region ablation, K teacher-forced passes (batched)."""
    return span_logprob_drop(model, prepared, trace, regions, np.eye(regions.k, dtype=bool), operator).T


def subset_seed(seed: int, sample_id: str) -> list[int]:
    """The seed of one sample's random subsets: the run's seed and the sample's id, so that no two samples of a
    run share their subsets (a method cannot be tuned to one draw) and a sample's subsets do not depend on
    which other samples the run holds."""
    return [int(seed), zlib.crc32(sample_id.encode("utf-8"))]


def random_subsets(k: int, n: int, seed, p: float = 0.5) -> np.ndarray:
    """(n, K) bool masks, each region removed with probability p (no empty or full mask); ``seed`` an int or
    a sequence of ints (`subset_seed`)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, k)) < p
    for row in masks:
        if row.all() or not row.any():
            row[rng.integers(k)] ^= True
    return masks


def subset_effects(model, prepared, trace, regions: Regions, masks: np.ndarray, operator: str = "knockout") -> np.ndarray:
    """Δ(S, v) for every mask v: shape (n_masks, n_spans)."""
    return span_logprob_drop(model, prepared, trace, regions, masks, operator)


@dataclass
class GroundTruth:
    """The ablation ground truth of one sample that every method and the estimator are scored against."""

    effects: np.ndarray  # (n_spans, K) single-region Δ
    masks: np.ndarray  # (n_subsets, K) random region subsets
    subset_effects: np.ndarray  # (n_subsets, n_spans) Δ(S, v)
    seconds: float  # what the exhaustive single-region ablation cost


def ground_truth(model, prepared, trace, regions: Regions, operator: str, n_subsets: int, seed: int) -> GroundTruth:
    start = time.perf_counter()
    effects = single_region_effects(model, prepared, trace, regions, operator)
    seconds = time.perf_counter() - start
    masks = random_subsets(regions.k, n_subsets, seed=seed)
    return GroundTruth(effects, masks, subset_effects(model, prepared, trace, regions, masks, operator), seconds)
