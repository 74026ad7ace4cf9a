"""The live demo: the model thinks about an image, the text streams token by token, and each reasoning step's
amortized attribution arrives the moment the step closes — a row (text, top regions) and a map of its own.

One `DemoSession` (one model instance, its estimator) serves every visitor: each stream runs its generation in
a thread of its own with its own attention capture (a per-thread context), and its attribution in that
stream's worker, so one visitor's attribution does not hold up another's generation.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_SIDE = 1024  # px: a bigger upload is resized (with a note); regions and maps cost grows with the pixels
MAX_PROMPT_CHARS = 400  # a longer prompt is cut here (with a note): the demo's model reads short questions
MAX_NEW_TOKENS = 256
TOKEN_BATCH_S = 0.05  # tokens are sent to the page at most this often (each update is a round trip)


class StopStream(Exception):
    """Raised inside generation when the visitor pressed stop."""


@dataclass
class Step:
    """One closed span: its text, top regions and maps (amortized; the ablation truth when asked for)."""

    label: str
    text: str
    scores: np.ndarray
    emitted_s: float
    heatmap: object  # PIL image
    truth: np.ndarray | None = None
    truth_heatmap: object | None = None

    def top(self, n: int = 3) -> list[int]:
        return np.argsort(-self.scores)[:n].tolist()

    def top_text(self) -> str:
        return ", ".join(f"{k} ({self.scores[k]:+.2f})" for k in self.top())


@dataclass
class DemoUpdate:
    text: str  # the trace so far
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    done: bool = False
    status: str = ""


def read_input(image, prompt: str) -> tuple[object, str, list[str]]:
    """The image (a PIL image or a file path) and prompt a stream can use, with notes on what was changed;
    ValueError with one clear sentence for anything unusable."""
    from PIL import Image, UnidentifiedImageError

    from ..images import check_image

    notes = []
    if image is None or (isinstance(image, str) and not image):
        raise ValueError("no image: pick an example or upload one")
    if isinstance(image, (str, Path)):
        name = Path(image).name
        try:
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            reason = "it is damaged or cut short" if isinstance(e, OSError) and not isinstance(e, UnidentifiedImageError) \
                else "it is not an image file"
            raise ValueError(f"{name} cannot be read as an image ({reason}): upload a PNG, JPEG, WebP, GIF or BMP") from None
    image = check_image(image)
    if max(image.size) > MAX_SIDE:
        w, h = image.size
        scale = MAX_SIDE / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
        notes.append(f"image resized from {w}×{h} to {image.width}×{image.height} px (the demo's limit is {MAX_SIDE} px)")
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("the prompt is empty: ask the model a question about the image")
    if len(prompt) > MAX_PROMPT_CHARS:
        notes.append(f"prompt cut to its first {MAX_PROMPT_CHARS} of {len(prompt)} characters")
        prompt = prompt[:MAX_PROMPT_CHARS]
    return image, prompt, notes


class _TokenTap:
    """The model as `stream_attributions` sees it, with every generated token also reported to ``on_token``
    and generation stopped (StopStream) once ``stop`` is set. Everything else is the model itself."""

    def __init__(self, model, on_token, stop: threading.Event):
        self._model, self._on_token, self._stop = model, on_token, stop

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate_ids(self, prepared, max_new_tokens=256, streamer=None):
        tap = self

        class Tee:
            prompt_seen = False

            def put(self, value):
                if tap._stop.is_set():
                    raise StopStream()
                streamer.put(value)
                if not self.prompt_seen:  # generate hands the prompt over first
                    self.prompt_seen = True
                elif value.numel() == 1:
                    token = int(value.item())
                    if token not in tap._model.eos_ids:
                        tap._on_token(token)

            def end(self):
                streamer.end()

        return self._model.generate_ids(prepared, max_new_tokens, streamer=Tee())


class DemoSession:
    """The live demo's model, estimator and streams. The model loads once, at the first stream (or `load`)."""

    def __init__(self, model_name: str = "vattr-tiny", regions: str = "feature-ward", k: int = 16, device: str = "cpu"):
        self.model_name, self.regions, self.k, self.device = model_name, regions, k, device
        self._model = self._estimator = None
        self._lock = threading.Lock()

    def load(self):
        with self._lock:  # two first visitors at once load one model
            if self._model is None:
                from ..methods.amortized import Amortized
                from ..models import load_model

                model = load_model(self.model_name, device=self.device)
                self._estimator = Amortized().load_for(model, self.regions, "knockout")
                self._model = model
        return self._model, self._estimator

    def stream(self, image, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS, with_truth: bool = False,
               stop: threading.Event | None = None):
        """Yield a `DemoUpdate` as tokens arrive (at most every TOKEN_BATCH_S) and at each closed span; with
        ``with_truth``, a last update adds each step's exhaustive single-region ablation (the truth the
        benchmark scores against). Bad input raises ValueError naming the problem."""
        from ..heatmaps import annotated_overlay, overlay_layout
        from ..regions import make_regions
        from ..streaming import stream_attributions

        image, prompt, notes = read_input(image, prompt)
        model, estimator = self.load()
        prepared = model.prepare(image, prompt)
        regions, note = make_regions(self.regions, model, prepared, k=self.k)
        notes = [f"{regions.k} {regions.protocol} regions" + (f"; {note}" if note else ""), *notes]
        layout = overlay_layout(image, regions)  # outlines and number places: the same for every step
        stop = stop or threading.Event()
        events: queue.Queue = queue.Queue()
        token_ids: list[int] = []

        def produce():
            try:
                tapped = _TokenTap(model, lambda t: events.put(("token", t)), stop)
                stream_attributions(tapped, prepared, regions, estimator, max_new_tokens,
                                    on_event=lambda e: events.put(("span", e)))
                events.put(("done", None))
            except StopStream:
                events.put(("stopped", None))
            except Exception as e:  # shown after the spans that did arrive
                events.put(("error", e))

        threading.Thread(target=produce, daemon=True, name="demo-generation").start()
        steps: list[Step] = []
        spans = []
        last_sent, dirty = 0.0, False
        try:
            while True:
                try:
                    kind, item = events.get(timeout=TOKEN_BATCH_S)
                except queue.Empty:
                    kind, item = "tick", None
                if kind == "token":
                    token_ids.append(item)
                    dirty = True
                elif kind == "span":
                    spans.append(item)
                    label = "answer" if item.is_answer else f"step {item.index + 1}"
                    heat = annotated_overlay(image, regions, item.scores, caption=f"{label}: {item.text}", layout=layout)
                    steps.append(Step(label, item.text.strip(), np.asarray(item.scores), item.emitted_s, heat))
                    dirty = True
                elif kind in ("done", "stopped", "error"):
                    break
                now = time.perf_counter()
                if dirty and (kind == "span" or now - last_sent >= TOKEN_BATCH_S):
                    yield DemoUpdate(model.decode(token_ids), list(steps), notes, status="thinking…")
                    last_sent, dirty = now, False
            text = model.decode(token_ids)
            if kind == "error":
                raise ValueError(f"generation stopped: {type(item).__name__}: {item}")
            if kind == "stopped":
                yield DemoUpdate(text, steps, notes, done=True, status=f"stopped after {len(steps)} steps")
                return
            status = f"done: {len(steps)} steps, {len(token_ids)} tokens"
            if len(token_ids) >= max_new_tokens:
                notes = [*notes, f"the model reached the {max_new_tokens}-token limit; its trace is cut there"]
            if with_truth and steps:
                yield DemoUpdate(text, steps, notes, status="computing the ablation truth…")
                self._add_truth(model, prepared, token_ids, regions, image, steps, spans, layout)
            yield DemoUpdate(text, steps, notes, done=True, status=status)
        finally:
            stop.set()  # the visitor left (the generator was closed): generation stops at its next token

    @staticmethod
    def _add_truth(model, prepared, token_ids, regions, image, steps, spans, layout) -> None:
        """Each step's exhaustive single-region ablation effects (K teacher-forced passes) and their map."""
        from ..heatmaps import annotated_overlay
        from ..regions import single_region_effects

        trace = model.trace_from_ids(prepared, token_ids)
        truth = single_region_effects(model, prepared, trace, regions)
        by_range = {(s.start, s.end): i for i, s in enumerate(trace.spans)}
        for step, event in zip(steps, spans):
            row = by_range.get((event.start, event.end))
            if row is None:
                continue
            step.truth = truth[row]
            step.truth_heatmap = annotated_overlay(image, regions, step.truth, caption=f"{step.label}: ablation truth",
                                                    layout=layout)
