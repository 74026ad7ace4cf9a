"""Reading and checking user images: odd inputs get a clear error naming the problem."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

MIN_SIDE = 8
MAX_ASPECT = 50


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return check_image(img)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def check_image(image) -> Image.Image:
    """RGB copy of a usable image; grayscale/palette/alpha images are converted, degenerate ones refused."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"image is {w}×{h} pixels; at least {MIN_SIDE}×{MIN_SIDE} is needed")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise ValueError(f"image is {w}×{h} pixels: aspect ratio above {MAX_ASPECT}:1 is not supported")
    return image if image.mode == "RGB" else image.convert("RGB")
