"""Streaming attribution: generation is the producer, the amortized estimator runs in a background
worker, and an event per span comes out while the model is still writing the next one.

The producer is the model's own `generate` (greedy, KV cache), run with the fast attention capture
(models/attention_capture.py) and a transformers streamer. For each new token the streamer takes the
captured query row that predicted it (the same row the offline `amortized` method pools) and its
log-sum-exp — no weights yet, nothing that grows with the context. When the span splitter closes a span,
its rows go on a queue; the worker turns them into attention weights to the visual tokens, pools them
into features, applies the estimator and emits a `SpanEvent`.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from transformers.generation.streamers import BaseStreamer

from .amortized import LinearEstimator, span_region_features
from .models.spans import SpanSplitter
from .types import Regions, Span

_DONE = object()


@dataclass
class SpanEvent:
    index: int  # span number in the trace
    text: str
    start: int  # token range [start, end) in the trace
    end: int
    is_answer: bool
    scores: np.ndarray  # (K,) estimated effect of each region on this span
    emitted_s: float  # seconds since generation started
    tokens_generated: int  # how many trace tokens existed when the event was emitted
    lag_s: float = 0.0  # seconds from the span's last token to this event


def attribute_span(capture, queries, lse, regions: Regions, estimator: LinearEstimator) -> np.ndarray:
    """(K,) scores for one span from its captured rows — the whole per-span cost of the amortized method
    once generation has run (queries (L, H, n, d), lse (L, H, n))."""
    rows = capture.weights(queries, lse).numpy()  # (L, H, n, N)
    local = Span(0, rows.shape[2], "", False)
    pool = estimator.meta.get("region_pool", "sum")
    return estimator.predict(span_region_features(rows, [local], regions.token_matrix, pool))[0]


class _SpanStreamer(BaseStreamer):
    """transformers streamer: feeds each generated token to the span splitter and hands every closed
    span, with its captured attention rows, to the worker queue."""

    def __init__(self, model, capture, work: queue.Queue, progress: dict):
        self.model, self.capture, self.work, self.progress = model, capture, work, progress
        self.splitter = SpanSplitter(model.decode)
        self.queries: list[torch.Tensor] = []  # per trace token: (L, H, d)
        self.lse: list[torch.Tensor] = []  # per trace token: (L, H)
        self.prompt_seen = self.ended = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands the prompt over first
            self.prompt_seen = True
            return
        token = int(value.reshape(-1)[0])
        if self.ended or token in self.model.eos_ids:
            self.ended = True
            return
        queries, lse = self.capture.take()  # the row that predicted this token
        self.queries.append(queries[:, :, -1])
        self.lse.append(lse[:, :, -1])
        self.progress["tokens"] = len(self.queries)
        self._hand_over(self.splitter.feed(token))

    def end(self) -> None:
        self._hand_over(self.splitter.finish())

    def _hand_over(self, span: Span | None) -> None:
        if span is not None:
            self.progress["span_closed_s"][span.start] = time.perf_counter()
            self.work.put((span, torch.stack(self.queries[span.start:span.end], dim=2),
                           torch.stack(self.lse[span.start:span.end], dim=2)))


def stream_attributions(model, prepared, regions: Regions, estimator: LinearEstimator,
                        max_new_tokens: int = 256) -> Iterator[SpanEvent]:
    """Yield one SpanEvent per span, in trace order, as generation goes on."""
    work: queue.Queue = queue.Queue()
    events: queue.Queue = queue.Queue()
    progress = {"tokens": 0, "span_closed_s": {}}
    t0 = time.perf_counter()
    captures: list = []

    def worker():
        index = 0
        while (item := work.get()) is not _DONE:
            span, queries, lse = item
            scores = attribute_span(captures[0], queries, lse, regions, estimator)
            now = time.perf_counter()
            events.put(SpanEvent(index, span.text, span.start, span.end, span.is_answer, scores, now - t0,
                                 progress["tokens"], now - progress["span_closed_s"][span.start]))
            index += 1
        events.put(_DONE)

    def producer():
        try:
            with model.capture_visual_attention(prepared) as capture:
                captures.append(capture)
                model.generate_ids(prepared, max_new_tokens, streamer=_SpanStreamer(model, capture, work, progress))
        except BaseException as e:  # surface in the consumer, after what was already emitted
            error.append(e)
        finally:
            work.put(_DONE)

    error: list[BaseException] = []
    threads = [threading.Thread(target=producer, daemon=True), threading.Thread(target=worker, daemon=True)]
    for t in threads:
        t.start()
    while (event := events.get()) is not _DONE:
        yield event
    for t in threads:
        t.join()
    if error:
        raise error[0]
