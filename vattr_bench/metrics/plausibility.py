"""Plausibility on synthetic samples: does a span's top region point at its ground-truth evidence box?"""
from __future__ import annotations

import numpy as np

HIT_FRACTION = 0.5


def pointing_game(scores: np.ndarray, trace, sample, regions) -> np.ndarray:
    """Per span: 1 if the span's top-scored region lies mostly inside the evidence box of the step the
    span reads (≥ half of the region's pixels in the box, or ≥ half of the box covered by the region),
    else 0. Thinking span i is matched to reference step i, only when the trace has exactly as many
    thinking spans as the sample has steps; other spans (the answer, misaligned traces) get NaN."""
    out = np.full(len(trace.spans), np.nan)
    thinking = [i for i, s in enumerate(trace.spans) if not s.is_answer]
    if not sample.steps or len(thinking) != len(sample.steps):
        return out
    for span_index, step in zip(thinking, sample.steps):
        x0, y0, x1, y1 = step.box
        region = regions.pixel_masks[int(np.argmax(scores[span_index]))]
        inside = region[y0:y1, x0:x1].sum()
        box_area = max(1, (x1 - x0) * (y1 - y0))
        out[span_index] = float(inside >= HIT_FRACTION * max(1, region.sum()) or inside >= HIT_FRACTION * box_area)
    return out
