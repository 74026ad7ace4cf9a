"""General family (GQA, COCO, ReferIt in spirit): a scene of coloured objects; name the colour of the
one the question refers to. Each step reads the object in one quadrant."""
from __future__ import annotations

import numpy as np

from ..types import EvidenceStep, Sample
from ._draw import COLOURS, SHAPES, canvas, clip_box, draw_shape, jitter, vary

FAMILY = "general"
DESCRIPTION = "scene: name colour and shape in each quadrant, answer the colour of one object"
REAL_SETS = ("lmms-lab/GQA", "detection-datasets/coco", "lmms-lab/RefCOCO")

_QUADRANTS = (("top left", (16, 16)), ("top right", (48, 16)), ("bottom left", (16, 48)), ("bottom right", (48, 48)))


def synthetic_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    img, draw = canvas(rng)
    shapes = [SHAPES[int(i)] for i in rng.permutation(len(SHAPES))]
    colours = [list(COLOURS)[int(i)] for i in rng.integers(len(COLOURS), size=4)]
    steps = []
    for (name, (x, y)), shape, colour in zip(_QUADRANTS, shapes, colours):
        cx, cy, r = x + jitter(rng, 3), y + jitter(rng, 3), 8 + int(rng.integers(0, 3))
        box = (cx - r, cy - r, cx + r, cy + r)
        draw_shape(draw, shape, box, fill=vary(COLOURS[colour], rng))
        steps.append(EvidenceStep(f"{name} is a {colour} {shape}", clip_box((box[0], box[1], box[2] + 1, box[3] + 1))))
    target = int(rng.integers(4))
    prompt = f"what color is the {shapes[target]} ?"
    return Sample(sample_id, FAMILY, img, prompt, colours[target], steps)
