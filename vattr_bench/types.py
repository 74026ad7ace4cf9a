"""The data types every stage passes along.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the sample's own image, x1/y1 exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass
class EvidenceStep:
    """One reasoning step of the reference trace and the image box it reads."""

    text: str
    box: Box


@dataclass
class Sample:
    """One benchmark item: an image, a prompt and what a correct answer looks like."""

    id: str
    family: str
    image: Image.Image
    prompt: str
    reference: str | None = None
    steps: list[EvidenceStep] = field(default_factory=list)
    source: str = "synthetic"

    def __post_init__(self):
        if not isinstance(self.image, Image.Image):
            raise TypeError(f"sample {self.id!r}: image must be a PIL.Image, got {type(self.image).__name__}")
        if self.image.mode != "RGB":
            self.image = self.image.convert("RGB")
        if not self.prompt or not self.prompt.strip():
            raise ValueError(f"sample {self.id!r}: the prompt is empty")

    @property
    def reference_trace(self) -> str:
        """The gold `<think> step . step . </think> answer` text (synthetic samples know it)."""
        think = " ".join(f"{s.text} ." for s in self.steps)
        return f"{THINK_OPEN} {think} {THINK_CLOSE} {self.reference}"


@dataclass
class Span:
    """A sentence of the trace: token range ``[start, end)`` into ``Trace.token_ids``."""

    start: int
    end: int
    text: str
    is_answer: bool = False


@dataclass
class Trace:
    """What the model wrote for a sample, split into spans."""

    token_ids: list[int]
    text: str
    spans: list[Span]
    logprobs: np.ndarray  # (len(token_ids),) log p(y_t | x, y<t) under the model that wrote it
    answer: str

    @property
    def n_thinking_steps(self) -> int:
        return sum(1 for s in self.spans if not s.is_answer)


def validate_attribution(scores, n_spans: int, n_regions: int, method: str = "method") -> np.ndarray:
    """An Attribution is a finite float array of shape (n_spans, K); say exactly what is wrong if not."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n_spans, n_regions):
        raise ValueError(f"{method}: attribution has shape {arr.shape}, expected ({n_spans}, {n_regions}) = (n_spans, K)")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise ValueError(f"{method}: attribution has {bad} non-finite value(s) (NaN or inf)")
    return arr


@dataclass
class Regions:
    """K image regions: pixel masks and the matching K×N matrix over the model's visual tokens.

    Every visual token belongs to exactly one region (the one holding most of its pixels), so the
    token matrix is a partition; ``protocol`` and ``params`` record how the regions were made.
    """

    pixel_masks: np.ndarray  # (K, H, W) bool
    token_matrix: np.ndarray  # (K, N) bool
    protocol: str
    params: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.token_matrix.shape[0])

    def label_map(self) -> np.ndarray:
        """(H, W) int: the region index of each pixel (-1 where none)."""
        labels = np.full(self.pixel_masks.shape[1:], -1, dtype=np.int64)
        for k, mask in enumerate(self.pixel_masks):
            labels[mask] = k
        return labels
