"""Science family (ScienceQA, AI2D in spirit): a labelled diagram of parts joined by links; how many
different shapes does it use? Each step names the shape of one part."""
from __future__ import annotations

import numpy as np

from ..types import EvidenceStep, Sample
from ._draw import SHAPES, canvas, clip_box, draw_shape, jitter

FAMILY = "science"
DESCRIPTION = "diagram: name the shape of each of three linked parts, count the different shapes"
PAPER_SETS = ("ScienceQA", "AI2D")  # the real sets this family stands in for

_NODES = (("top", (32, 13)), ("left", (13, 49)), ("right", (51, 49)))


def synthetic_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    img, draw = canvas(rng)
    centres = [(x + jitter(rng), y + jitter(rng)) for _, (x, y) in _NODES]
    for a, b in ((0, 1), (1, 2), (2, 0)):  # the links of the diagram, drawn under the parts
        draw.line((*centres[a], *centres[b]), fill=(170, 170, 170), width=1)
    shapes = [SHAPES[int(i)] for i in rng.integers(len(SHAPES), size=3)]
    steps = []
    for (name, _), (cx, cy), shape in zip(_NODES, centres, shapes):
        r = 9 + int(rng.integers(0, 2))
        box = (cx - r, cy - r, cx + r, cy + r)
        draw_shape(draw, shape, box, fill=(255, 255, 255), outline=(0, 0, 0), width=2)
        steps.append(EvidenceStep(f"the {name} part is a {shape}", clip_box((box[0], box[1], box[2] + 1, box[3] + 1))))
    return Sample(sample_id, FAMILY, img, "how many different shapes are in the diagram ?", str(len(set(shapes))), steps)
