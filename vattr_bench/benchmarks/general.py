"""General family (GQA, COCO, ReferIt in spirit): a scene of four objects of four different colours to
caption, COCO-style. Each step reads the object in one quadrant."""
from __future__ import annotations

import numpy as np

from ..types import EvidenceStep, Sample
from ._draw import COLOURS, SHAPES, canvas, clip_box, draw_shape, jitter, vary

FAMILY = "general"
DESCRIPTION = "scene: name colour and shape in each quadrant, answer with a caption of the scene"
PAPER_SETS = ("GQA", "COCO", "ReferIt")  # the real sets this family stands in for

_QUADRANTS = (("top left", (16, 16)), ("top right", (48, 16)), ("bottom left", (16, 48)), ("bottom right", (48, 48)))


def synthetic_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    img, draw = canvas(rng)
    shapes = [SHAPES[int(i)] for i in rng.permutation(len(SHAPES))]
    colours = [list(COLOURS)[int(i)] for i in rng.permutation(len(COLOURS))]
    steps = []
    for (name, (x, y)), shape, colour in zip(_QUADRANTS, shapes, colours):
        cx, cy, r = x + jitter(rng, 2), y + jitter(rng, 2), 9 + int(rng.integers(0, 3))
        box = (cx - r, cy - r, cx + r, cy + r)
        draw_shape(draw, shape, box, fill=vary(COLOURS[colour], rng))
        steps.append(EvidenceStep(f"{name} is a {colour} {shape}", clip_box((box[0], box[1], box[2] + 1, box[3] + 1))))
    caption = " , ".join(f"a {c} {s}" for c, s in zip(colours[:3], shapes[:3])) + f" and a {colours[3]} {shapes[3]}"
    return Sample(sample_id, FAMILY, img, "describe the scene .", caption, steps)
