"""Document family (DocVQA, ChartMimic in spirit): a horizontal bar chart to read and turn into
plotting code. Each step reads one row of the chart."""
from __future__ import annotations

import numpy as np

from ..types import EvidenceStep, Sample
from ._draw import COLOURS, NUMBER_WORDS, canvas, clip_box, jitter, vary

FAMILY = "document"
DESCRIPTION = "chart to code: read three horizontal bars, write barh([...])"
PAPER_SETS = ("DocVQA", "ChartMimic")  # the real sets this family stands in for


def synthetic_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    img, draw = canvas(rng)
    left = 7 + jitter(rng, 1)
    draw.line((left - 1, 4, left - 1, 60), fill=(0, 0, 0), width=1)
    palette = list(COLOURS.values())
    order = rng.permutation(len(palette))[:3]
    values = [int(v) for v in rng.integers(1, 6, size=3)]
    steps = []
    for i, (centre, v, c) in enumerate(zip((14, 32, 50), values, order)):
        cy = centre + jitter(rng)
        box = (left, cy - 5, left + 10 * v, cy + 5)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=vary(palette[int(c)], rng))
        steps.append(EvidenceStep(f"row {NUMBER_WORDS[i + 1]} is {v}", clip_box(box)))
    answer = "barh ( [ " + " , ".join(map(str, values)) + " ] )"
    return Sample(sample_id, FAMILY, img, "turn this chart into code .", answer, steps)
