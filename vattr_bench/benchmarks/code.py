"""Code family (WebSight in spirit): a web-page screenshot to turn into HTML. Each step reads the kind
of one page block (header, text, button, image)."""
from __future__ import annotations

import numpy as np

from ..types import EvidenceStep, Sample
from ._draw import COLOURS, NUMBER_WORDS, canvas, clip_box, jitter, vary

FAMILY = "code"
DESCRIPTION = "screenshot to HTML: name each of three stacked blocks, write the tags"
PAPER_SETS = ("WebSight",)  # the real sets this family stands in for

BLOCKS = {"header": "<h1></h1>", "text": "<p></p>", "button": "<button></button>", "image": "<img/>"}


def _draw_block(draw, kind: str, top: int, rng) -> tuple[int, int, int, int]:
    x = 5 + jitter(rng)
    if kind == "header":
        box = (x, top, 59 + jitter(rng), top + 12)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=vary((40, 40, 60), rng))
    elif kind == "text":
        right = x
        for k in range(3):
            end = x + int(rng.integers(30, 52))
            draw.line((x, top + 2 + 4 * k, end, top + 2 + 4 * k), fill=vary((120, 120, 120), rng), width=2)
            right = max(right, end + 1)
        box = (x, top, right, top + 12)
    elif kind == "button":
        box = (x, top + 1, x + 24, top + 11)
        colour = list(COLOURS.values())[int(rng.integers(len(COLOURS)))]
        draw.rounded_rectangle((box[0], box[1], box[2] - 1, box[3] - 1), radius=3, fill=vary(colour, rng))
    elif kind == "image":
        box = (x, top, x + 22, top + 13)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(200, 200, 200), outline=(90, 90, 90))
        draw.line((box[0], box[1], box[2] - 1, box[3] - 1), fill=(90, 90, 90))
        draw.line((box[0], box[3] - 1, box[2] - 1, box[1]), fill=(90, 90, 90))
    else:
        raise ValueError(kind)
    return clip_box(box)


def synthetic_sample(rng: np.random.Generator, sample_id: str) -> Sample:
    img, draw = canvas(rng)
    kinds = [list(BLOCKS)[int(i)] for i in rng.integers(len(BLOCKS), size=3)]
    steps = []
    for i, (top, kind) in enumerate(zip((5, 26, 47), kinds)):
        box = _draw_block(draw, kind, top + jitter(rng, 1), rng)
        steps.append(EvidenceStep(f"block {NUMBER_WORDS[i + 1]} is {'an' if kind == 'image' else 'a'} {kind}", box))
    answer = " ".join(BLOCKS[k] for k in kinds)
    return Sample(sample_id, FAMILY, img, "write the html for this page .", answer, steps)
