"""Hard variants of the five families: the same scene, prompt, steps and answer, made harder to read.

vattr-tiny answers the standard families almost always right, so they cannot show what a failing trace
looks like. Sample ``i`` of ``math-hard`` is sample ``i`` of ``math`` (same seed and split: the same scene,
so the two can be compared pair by pair) with, drawn from an RNG stream of its own and at random per
sample so that difficulty varies within a family:

- distractors: small shapes in the figure's colours, placed where they do not touch any evidence box;
- occlusion: a grey patch over part of one evidence box, placed so the element stays readable (a bar's
  end, which gives its value, is never covered);
- noise: Gaussian pixel noise.

The evidence boxes, the reference trace and the answer are those of the standard sample: every word
the model must write is one it was trained on, so its traces stay `<think> … </think> answer`, and a
wrong answer is a misreading of the image. The strengths below were tuned so that vattr-tiny fails on
20–60% of each hard family (docs/trajectory.md gives the measured rates and the command).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
from PIL import Image, ImageDraw

from ..types import Sample
from . import code, document, general, math, science
from ._draw import COLOURS, SHAPES, SIZE, draw_shape, vary

SUFFIX = "-hard"


@dataclass(frozen=True)
class HardVariant:
    """A family module's stand-in (FAMILY, DESCRIPTION, PAPER_SETS, synthetic_sample(rng, id)) for the
    hard variant of ``base``; ``HARD`` marks it in listings."""

    base: ModuleType
    max_distractors: int  # distractors per sample: uniform in 0..max_distractors
    max_occlusion: float  # side of the occluding patch, as a fraction of the box's: uniform in 0..max_occlusion
    max_noise: float  # std of the pixel noise (0–255 scale): uniform in 0..max_noise
    keep_end: str | None = None  # the side of a box the occluder never covers ("top": bars read by their top)
    HARD = True

    @property
    def FAMILY(self) -> str:  # noqa: N802 — the family modules' attribute name
        return self.base.FAMILY + SUFFIX

    @property
    def DESCRIPTION(self) -> str:  # noqa: N802
        return (f"{self.base.FAMILY} with up to {self.max_distractors} distractors, one evidence box up to "
                f"{self.max_occlusion:.0%} occluded, pixel noise σ ≤ {self.max_noise:g}")

    @property
    def PAPER_SETS(self) -> tuple[str, ...]:  # noqa: N802
        return self.base.PAPER_SETS

    def synthetic_sample(self, rng: np.random.Generator, sample_id: str) -> Sample:
        """A standard sample of the base family drawn from ``rng``, made hard with the same ``rng``."""
        return self.harden(self.base.synthetic_sample(rng, sample_id), rng, sample_id)

    def harden(self, sample: Sample, rng: np.random.Generator, sample_id: str) -> Sample:
        """``sample`` (of the base family) with distractors, one occluded box and noise drawn from ``rng``."""
        boxes = [step.box for step in sample.steps]
        image = sample.image.copy()
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(0, self.max_distractors + 1))):
            _draw_distractor(draw, rng, boxes)
        _occlude(draw, rng, boxes[int(rng.integers(len(boxes)))], float(rng.uniform(0, self.max_occlusion)),
                 self.keep_end)
        image = _add_noise(image, rng, float(rng.uniform(0, self.max_noise)))
        return Sample(sample_id, self.FAMILY, image, sample.prompt, sample.reference, sample.steps)


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_distractor(draw: ImageDraw.ImageDraw, rng: np.random.Generator, boxes, tries: int = 30) -> None:
    """One small shape of a figure colour somewhere no evidence box is; none when the figure has no room."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = vary(list(COLOURS.values())[int(rng.integers(len(COLOURS)))], rng)
    r = int(rng.integers(3, 6))
    for _ in range(tries):
        cx, cy = (int(v) for v in rng.integers(r, SIZE - r, size=2))
        box = (cx - r, cy - r, cx + r + 1, cy + r + 1)
        if not any(_overlaps(box, b) for b in boxes):
            draw_shape(draw, shape, (cx - r, cy - r, cx + r, cy + r), fill=colour)
            return


def _occlude(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box, fraction: float, keep_end: str | None) -> None:
    x0, y0, x1, y1 = box
    w, h = int(round((x1 - x0) * fraction)), int(round((y1 - y0) * fraction))
    if w < 1 or h < 1:
        return
    y_lo = y0 + (1 if keep_end == "top" else 0)  # a vertical bar: its top row stays visible
    x_hi = x1 - w - (1 if keep_end == "right" else 0)  # a horizontal bar: its right column stays visible
    x = int(rng.integers(x0, max(x0, x_hi) + 1))
    y = int(rng.integers(y_lo, max(y_lo, y1 - h) + 1))
    grey = int(rng.integers(110, 190))
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=(grey, grey, grey))


def _add_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    pixels = np.asarray(image).astype(np.float64) + rng.normal(0.0, sigma, size=(image.height, image.width, 3))
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


# tuned on vattr-tiny, split test, seed 0 (docs/trajectory.md): failure rates inside 20–60%
HARD_VARIANTS: dict[str, HardVariant] = {v.FAMILY: v for v in (
    HardVariant(math, max_distractors=8, max_occlusion=0.6, max_noise=40, keep_end="top"),
    HardVariant(science, max_distractors=10, max_occlusion=0.8, max_noise=40),
    HardVariant(document, max_distractors=4, max_occlusion=0.6, max_noise=40, keep_end="right"),
    HardVariant(code, max_distractors=8, max_occlusion=0.8, max_noise=40),
    HardVariant(general, max_distractors=9, max_occlusion=0.8, max_noise=40),
)}
