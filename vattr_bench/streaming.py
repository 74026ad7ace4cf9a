"""Streaming attribution: generation is the producer, the amortized estimator runs in a background
worker, and an event per span comes out while the model is still writing the next one.

The producer is the model's own `generate` (greedy, KV cache) in the caller's thread, run with the fast
attention capture (models/capture/) and a transformers streamer. The capture keeps, per
forward call, references to each decoder layer's new query row and its log-sum-exp — no weights yet,
nothing that grows with the context. Per token the streamer only runs the span splitter; when a span
closes, it puts the span and the capture's records since the last span on a queue. The worker writes
those rows into the capture's buffers, turns them into attention weights to the visual tokens, pools
them into features, applies the estimator and emits a `SpanEvent`. Everything but the splitter and a
list swap is the worker's: with 2 cores the producer's thread is the one the user waits for.
"""
from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
from threadpoolctl import ThreadpoolController
from transformers.generation.streamers import BaseStreamer

from .amortized import LinearEstimator, SpanAttributor, capture_options
from .models.spans import SpanSplitter
from .types import Regions, Span

_DONE = object()
_threadpools: ThreadpoolController | None = None  # found once: a lookup costs ~0.6 ms, a limit ~6 µs
# The BLAS limit is process-wide, so streams that overlap (the demo's visitors) share one: the first to start
# sets it, the last to end restores it. Each stream limiting and restoring on its own restored out of order:
# A sets 1 (keeps N), B sets 1 (keeps 1), A restores N under B's worker, B "restores" 1 for good.
_blas_lock = threading.Lock()
_blas_streams = 0  # streams inside `one_blas_thread` now
_blas_limiter = None  # threadpoolctl's limiter, held while _blas_streams > 0


@contextmanager
def one_blas_thread():
    """Context manager: numpy's BLAS (OpenBLAS) on one thread, process-wide, while a stream runs (while any
    stream runs, when several overlap). The worker's products are small, and a threaded one wakes BLAS
    threads that spin on the cores generation uses: a 27 M-parameter decoder streamed 31% slower than plain
    generation with the logit rows' products threaded, one-off. torch's own thread pools are not touched."""
    global _threadpools, _blas_streams, _blas_limiter
    with _blas_lock:
        if _blas_streams == 0:
            if _threadpools is None:
                _threadpools = ThreadpoolController()
            _blas_limiter = _threadpools.limit(limits=1, user_api="blas")
        _blas_streams += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_streams -= 1
            if _blas_streams == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


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
    # seconds spent attributing this span (flush, features, estimator); in the worker thread that is wall
    # time, waits for the interpreter lock included — run inline (worker=False) it is the work alone
    attribution_s: float = 0.0


class SpanStreamer(BaseStreamer):
    """transformers streamer: feeds each generated token to the span splitter and hands every closed
    span to ``sink`` (the worker's queue) with the capture's records since the last span (`take_pending`:
    a list swap; capture row t is the query that predicted token t, so they hold the span's rows). The
    worker flushes them; nothing else happens per token in the producer."""

    def __init__(self, model, capture, sink: Callable):
        self.capture, self.sink, self.eos_ids = capture, sink, model.eos_ids
        self.splitter = SpanSplitter(model.decode)
        self.token_ids: list[int] = []  # the trace so far (logit-weighted features read the span's)
        self.prompt_seen = self.ended = False

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands the prompt over first
            self.prompt_seen = True
            return
        if value.numel() != 1:
            raise RuntimeError(f"streaming runs one sequence, one token per step; generate handed over {value.numel()}")
        token = int(value.item())
        if self.ended or token in self.eos_ids:
            self.ended = True
            return
        self.token_ids.append(token)
        span = self.splitter.feed(token)
        if span is not None:
            self._hand_over(span, rows=self.n_tokens)

    def end(self) -> None:
        span = self.splitter.finish()
        if span is not None:  # the step that chose end-of-sequence may have left one row more
            self._hand_over(span, rows=None)

    def _hand_over(self, span: Span, rows: int | None) -> None:
        self.sink(ClosedSpan(span, self.token_ids[span.start:span.end], self.capture.take_pending(), rows,
                             time.perf_counter()))


@dataclass
class ClosedSpan:
    """What the streamer hands the worker when a span closes."""
    span: Span
    token_ids: list[int]  # the span's tokens
    records: list  # the capture's records since the previous span (`VisualAttentionCapture.take_pending`)
    rows: int | None  # rows the capture must hold after the flush (one per token generated), None: at least the span's
    closed_s: float  # time.perf_counter() when it closed


def stream_attributions(model, prepared, regions: Regions, estimator: LinearEstimator, max_new_tokens: int = 256,
                        on_event: Callable[[SpanEvent], None] | None = None, worker: bool = True) -> list[SpanEvent]:
    """Generate in the calling thread (the producer) while a worker thread attributes each span the moment
    it closes and hands its SpanEvent to ``on_event`` (called from the worker, in trace order). Returns
    every event. If generation fails, the events already emitted have reached ``on_event``.
    ``worker=False`` attributes each span inline, in the producer, when it closes (no thread; `perf`
    uses it to split the overhead between the capture and the thread).

    Generation stays in the caller's thread on purpose: torch ops issued from a second thread run on a
    second OpenMP pool that fights the first for the cores (3× slower decoding measured on 2 cores)."""
    work: queue.Queue = queue.Queue()
    events: list[SpanEvent] = []
    failures: list[BaseException] = []
    t0 = time.perf_counter()

    capture = attributor = streamer = None  # set once the capture is open, before any span can close

    def attribute(closed: ClosedSpan) -> None:
        if failures:
            return  # an earlier span failed: report the first failure
        try:
            start = time.perf_counter()
            capture.flush(closed.records)
            span = closed.span
            if capture.n_rows < span.end or (closed.rows is not None and capture.n_rows != closed.rows):
                raise RuntimeError(f"streaming expects one captured row per generated token; got {capture.n_rows} "
                                   f"rows for {closed.rows or span.end} tokens (batched or assisted decoding?)")
            scores = attributor(span.start, span.end, closed.token_ids)
            capture.release(span.end)  # a stream's memory: the rows of the spans in flight, not of the whole trace
            now = time.perf_counter()
            event = SpanEvent(len(events), span.text, span.start, span.end, span.is_answer, scores, now - t0,
                              streamer.n_tokens, now - closed.closed_s, now - start)
            events.append(event)
            if on_event is not None:
                on_event(event)
        except BaseException as e:
            failures.append(e)

    def consume():
        while (item := work.get()) is not _DONE:
            attribute(item)

    thread = threading.Thread(target=consume, daemon=True) if worker else None

    def stop_worker():
        if thread is not None and thread.is_alive():
            work.put(_DONE)
            thread.join()

    if thread is not None:
        thread.start()
    try:
        with one_blas_thread(), model.capture_visual_attention(prepared, capture_options(estimator.meta)) as capture:
            attributor = SpanAttributor(capture, regions, estimator)
            sink = work.put if thread is not None else attribute
            streamer = SpanStreamer(model, capture, sink)
            try:
                model.generate_ids(prepared, max_new_tokens, streamer=streamer)
            finally:
                stop_worker()  # the worker writes the capture's buffers: done before the capture flushes on exit
    finally:
        stop_worker()
    if failures:
        raise failures[0]
    return events
