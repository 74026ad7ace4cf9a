"""Math family (MathVista, MathVerse, OlympiadBench in spirit): read the values of a bar figure and
compute with them. Each step reads one bar."""
from __future__ import annotations

import numpy as np

from ..types import EvidenceStep, Sample
from ._draw import NUMBER_WORDS, canvas, clip_box, jitter, vary

FAMILY = "math"
DESCRIPTION = "bar figure arithmetic: read three bars, answer their sum or maximum"
PAPER_SETS = ("MathVista", "MathVerse", "OlympiadBench")  # the real sets this family stands in for

_OPS = {
    "what is the sum of the bars ?": sum,
    "what is the largest bar value ?": max,
}


def synthetic_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    img, draw = canvas(rng)
    colour = vary((70, 110, 180), rng, 40)
    baseline = 60 + jitter(rng, 1)
    draw.line((2, baseline, 62, baseline), fill=(0, 0, 0), width=1)
    values = [int(v) for v in rng.integers(1, 6, size=3)]
    steps = []
    for i, (centre, v) in enumerate(zip((12, 32, 52), values)):
        cx = centre + jitter(rng)
        top = baseline - 10 * v
        box = (cx - 5, top, cx + 5, baseline)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
        steps.append(EvidenceStep(f"bar {NUMBER_WORDS[i + 1]} is {v}", clip_box(box)))
    prompt = list(_OPS)[int(rng.integers(len(_OPS)))]
    return Sample(sample_id, FAMILY, img, prompt, str(_OPS[prompt](values)), steps)
