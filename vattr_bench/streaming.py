"""Streaming attribution: generation is the producer, the amortized estimator runs in a background
worker, and an event per span comes out while the model is still writing the next one.

The producer decodes greedily with the KV cache. The attention row that predicts token t (the query at
position P-1+t, the same row the offline `amortized` method pools) is read off the step that produced
t, restricted to the visual tokens — (L, H, N) per token, nothing more is kept. When the span splitter
closes a span, its rows go on a queue; the worker pools them into features, applies the estimator and
emits a `SpanEvent`. Attention weights need the eager kernel, so only a streaming run uses it.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

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


def stream_attributions(model, prepared, regions: Regions, estimator: LinearEstimator,
                        max_new_tokens: int = 256) -> Iterator[SpanEvent]:
    """Yield one SpanEvent per span, in trace order, as generation goes on."""
    work: queue.Queue = queue.Queue()
    events: queue.Queue = queue.Queue()
    progress = {"tokens": 0}
    t0 = time.perf_counter()
    pool = estimator.meta.get("region_pool", "sum")

    def worker():
        index = 0
        while (item := work.get()) is not _DONE:
            span, rows = item  # rows (L, H, n, N) for the span's n tokens
            local = Span(0, span.end - span.start, span.text, span.is_answer)
            scores = estimator.predict(span_region_features(rows, [local], regions.token_matrix, pool))[0]
            events.put(SpanEvent(index, span.text, span.start, span.end, span.is_answer, scores,
                                 time.perf_counter() - t0, progress["tokens"]))
            index += 1
        events.put(_DONE)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    error: list[BaseException] = []

    def producer():
        try:
            _generate(model, prepared, max_new_tokens, work, progress)
        except BaseException as e:  # surface in the consumer, after what was already emitted
            error.append(e)
        finally:
            work.put(_DONE)

    producer_thread = threading.Thread(target=producer, daemon=True)
    producer_thread.start()
    while (event := events.get()) is not _DONE:
        yield event
    producer_thread.join()
    thread.join()
    if error:
        raise error[0]


@torch.no_grad()
def _generate(model, prepared, max_new_tokens: int, work: queue.Queue, progress: dict) -> None:
    vis = torch.as_tensor(prepared.visual_positions, device=model.device)
    splitter = SpanSplitter(model.decode)
    rows: list[torch.Tensor] = []  # per trace token: (L, H, N)
    inputs = dict(prepared.inputs)
    with model._eager_attention():
        out = model.model(**inputs, use_cache=True, output_attentions=True)
        mask = inputs["attention_mask"]
        for _ in range(max_new_tokens):
            logits = out.logits[0, -1].clone()
            logits[model.image_token_id] = -float("inf")  # as in generate: never an image placeholder
            token = int(logits.argmax())
            if token in model.eos_ids:
                break
            rows.append(torch.stack([a[0, :, -1, vis] for a in out.attentions]).float().cpu())
            progress["tokens"] = len(rows)
            span = splitter.feed(token)
            if span is not None:
                work.put((span, torch.stack(rows[span.start:span.end], dim=2).numpy()))
            mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
            out = model.model(input_ids=torch.tensor([[token]], device=model.device), attention_mask=mask,
                              past_key_values=out.past_key_values, use_cache=True, output_attentions=True)
    span = splitter.finish()
    if span is not None:
        work.put((span, torch.stack(rows[span.start:span.end], dim=2).numpy()))
