"""Four micro-measurements behind the streaming worker's SpanAttributor (amortized/attributor.py) (docs/performance.md quotes them):

    python experiments/stream_microbench.py [--rounds 15] [--estimator E.json]

(``--estimator``: another estimator for vattr-tiny than the shipped one, e.g. one that uses some heads only.)

1. The streaming worker's pieces for one span of a real trace (best of 5 × 1000 calls): writing the
   records streamed generation hands over for the span into the buffers (the flush), reading the span's
   captured rows, turning them into weights, applying the estimator's weights summed over the span's
   tokens, and the whole SpanAttributor. Hot caches: the same span again and again.
2. Whether a multi-threaded BLAS call in the worker would slow generation: one `generate` timed right
   after nothing, after a 64×640 matrix-vector product (big enough for OpenBLAS to use its threads,
   which then spin for a while) and after a 64×64 one (single-threaded), interleaved, medians.
3. Why a span costs more in the stream than replayed back to back (perf's "in the stream" row): each span's
   flush + SpanAttributor timed alone, for every span of the trace, with nothing before it, with 16 MB
   written before it (caches evicted), and with one forward pass of the model before it (as a decode
   step runs between spans in a stream), interleaved rounds, median and best per span.
4. Where the worker's time goes when each stream's spans are replayed as perf's amortized row replays them
   (every test prompt's streamed records; each pass forgets what a stream reads once, then flushes and
   attributes span after span): the same passes cut after the flush, after the weights, and whole,
   interleaved, best pass per stream, per span. Steps run once each between other work here, so they
   cost more than in (1)'s hot loop. (A cut after the logit rows is left out: it read more than the whole
   pass, 335–396 vs 292–349 µs, and less, 247–256 vs 302–315, with glibc's MALLOC_MMAP_THRESHOLD_ and
   MALLOC_TRIM_THRESHOLD_ raised — when a cut frees its arrays, not its work, decided it.)
"""
import argparse
import statistics
import time
import timeit

import numpy as np
import torch

from vattr_bench.amortized import SpanAttributor, capture_options
from vattr_bench.benchmarks import FAMILIES, synthetic_sample
from vattr_bench.methods.amortized import Amortized
from vattr_bench.models import load_model
from vattr_bench.regions import make_regions
from vattr_bench.streaming import SpanStreamer, one_blas_thread


def best_us(fn, n=1000):
    fn()
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--estimator", default=None, help="estimator JSON (default: the shipped one)")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    model = load_model("vattr-tiny")
    sample = synthetic_sample("math", 0, "test")
    prepared = model.prepare(sample.image, sample.prompt)
    regions, _ = make_regions("feature-ward", model, prepared, k=16)
    estimator = Amortized(a.estimator).load_for(model, "feature-ward", "knockout")
    with model.capture_visual_attention(prepared, capture_options(estimator.meta)) as capture:
        closed = []
        trace = model.trace_from_ids(prepared, model.generate_ids(
            prepared, 128, streamer=SpanStreamer(model, capture, closed.append)))
    span, records = trace.spans[1], closed[1].records
    capture.flush(records)  # the streamer took them: rewrite the span's rows, as the worker does
    attributor = SpanAttributor(capture, regions, estimator)
    weights = capture.weights(span.start, span.end)  # (L, H, n, N), or (F, n, N) for the heads an estimator uses
    n, N = weights.shape[-2:]
    heads = weights.size // (n * N)
    print(f"| worker step, one span of {n} tokens | µs |\n|---|---|")
    print(f"| flush the span's records ({len(records)} layer calls) | {best_us(lambda: capture.flush(records)):.1f} |")
    print(f"| read rows | {best_us(lambda: capture.rows(span.start, span.end)):.1f} |")
    print(f"| weights | {best_us(lambda: capture.weights(span.start, span.end)):.1f} |")
    per_token = np.ones((heads, N), np.float32)
    print(f"| estimator weights, summed over tokens ({heads} heads) | "
          f"{best_us(lambda: np.einsum('htn,hn->n', weights.reshape(heads, n, N), per_token)):.1f} |")
    print(f"| whole SpanAttributor | {best_us(lambda: attributor(span.start, span.end, trace.token_ids[span.start:span.end])):.1f} |")

    cache_state(model, prepared, capture, attributor, closed, trace, a.rounds * 10)
    steps_replayed(model, estimator, a.rounds * 3)

    w, big, small = np.random.rand(64), np.random.rand(64, 640), np.random.rand(64, 64)
    before = {"nothing": lambda: None, "64×640 gemv": lambda: w @ big, "64×64 gemv": lambda: w @ small}
    model.generate_ids(prepared, 128)
    seconds = {k: [] for k in before}
    for _ in range(a.rounds):
        for name, call in before.items():
            call()
            start = time.perf_counter()
            model.generate_ids(prepared, 128)
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["nothing"])
    print("\n| right before generate | generate (median) | vs nothing |\n|---|---|---|")
    for name, xs in seconds.items():
        print(f"| {name} | {statistics.median(xs) * 1e3:.1f} ms | {100 * (statistics.median(xs) / base - 1):+.1f}% |")


def cache_state(model, prepared, capture, attributor, closed, trace, rounds: int) -> None:
    ids, buffer = trace.token_ids, np.zeros(4 * 2**20, np.float32)  # 16 MB
    before = {"nothing": lambda: None, "16 MB written": lambda: np.add(buffer, 1.0, out=buffer),
              "one forward pass": lambda: model.token_logprobs(prepared, ids[:1])}
    seconds = {k: [] for k in before}
    with one_blas_thread():  # as in the worker
        for _ in range(rounds):
            for name, call in before.items():
                for records, span in zip((c.records for c in closed), trace.spans):
                    call()
                    start = time.perf_counter()
                    capture.flush(records)
                    attributor(span.start, span.end, ids[span.start:span.end])
                    seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["nothing"])
    print(f"\n| before each span's flush + attribution ({len(trace.spans)} spans × {rounds} rounds) | median µs | best µs "
          f"| median vs nothing |\n|---|---|---|---|")
    for name, xs in seconds.items():
        print(f"| {name} | {statistics.median(xs) * 1e6:.0f} | {min(xs) * 1e6:.0f} | {statistics.median(xs) / base:.2f}× |")


def steps_replayed(model, estimator, rounds: int, per_family: int = 2) -> None:
    streams = []
    for family in FAMILIES:
        for i in range(per_family):
            s = synthetic_sample(family, i, "test")
            prepared = model.prepare(s.image, s.prompt)
            regions, _ = make_regions("feature-ward", model, prepared, k=16)
            with model.capture_visual_attention(prepared, capture_options(estimator.meta)) as capture:
                closed = []
                model.generate_ids(prepared, 128, streamer=SpanStreamer(model, capture, closed.append))
            streams.append((capture, regions, closed))
    cut_after = {  # what each pass does per span, beyond the flush
        "flush": lambda capture, attributor, c: None,
        "+ weights": lambda capture, attributor, c: capture.weights(c.span.start, c.span.end),
        "whole (flush + SpanAttributor)": lambda capture, attributor, c: attributor(c.span.start, c.span.end, c.token_ids),
    }
    best = {name: [float("inf")] * len(streams) for name in cut_after}
    with one_blas_thread():
        names = list(cut_after)
        for r in range(rounds):  # the order rotates each round, so that no pass always follows the same one
            for name in names[r % len(names):] + names[:r % len(names)]:
                step = cut_after[name]
                for i, (capture, regions, closed) in enumerate(streams):
                    start = time.perf_counter()
                    capture.clear_reads()  # a stream reads the prompt once: every pass does, as in perf
                    attributor = SpanAttributor(capture, regions, estimator)
                    for c in closed:
                        capture.flush(c.records)
                        step(capture, attributor, c)
                    best[name][i] = min(best[name][i], time.perf_counter() - start)
    n_spans = sum(len(closed) for _, _, closed in streams)
    print(f"\n| replayed as perf does ({len(streams)} streams, {n_spans} spans, best of {rounds} passes each) "
          f"| µs a span |\n|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {sum(seconds) / n_spans * 1e6:.0f} |")


if __name__ == "__main__":
    main()
