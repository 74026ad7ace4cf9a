"""Small Pillow drawing helpers shared by the synthetic generators.

Every generator draws on a SIZE×SIZE canvas with a little positional jitter and colour noise, so
held-out images are new pixels even where the underlying facts repeat.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
SHAPES = ["circle", "square", "triangle", "cross"]


def canvas(rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    tint = tuple(int(v) for v in rng.integers(235, 256, size=3))
    img = Image.new("RGB", (SIZE, SIZE), tint)
    return img, ImageDraw.Draw(img)


def jitter(rng: np.random.Generator, amount: int = 2) -> int:
    return int(rng.integers(-amount, amount + 1))


def vary(colour: tuple[int, int, int], rng: np.random.Generator, amount: int = 20) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill=None, outline=None, width: int = 2) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline, width=width)
    elif shape == "cross":
        t = max(2, (x1 - x0) // 6)  # thin arms: a fat cross reads as a blob and gets confused with a circle
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        ink = outline or fill  # a cross is all stroke: outline colour when there is one
        draw.rectangle((cx - t, y0, cx + t, y1), fill=ink)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=ink)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def clip_box(box) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (max(0, int(x0)), max(0, int(y0)), min(SIZE, int(x1)), min(SIZE, int(y1)))
