"""Where a stream's extra time goes, counted in place: timers wrapped around the streaming pieces while
10 test prompts (2 per family) stream with attribution inline (no thread, so every piece runs in the
one thread being timed). Wall-time differences (perf, overhead_split.py) drown pieces of a few hundred
µs a stream in this VM's noise; these sums do not, though the wrappers add ~1 µs a call.

    python experiments/stream_accounting.py [--per-family 2]

| piece | where it runs when streaming |
|---|---|
| capture record (per layer and forward call; the prompt's visual keys/values at its first call) | producer |
| span splitter: feed (per token), close (decodes the span's text) | producer |
| capture flush (a closed span's records into the buffers) | worker |
| attribution (rows → weights → estimator; the prompt read at the first span) | worker |
"""
import argparse
import functools
import time

import torch

from vattr_bench.amortized import SpanAttributor
from vattr_bench.methods import load_method
from vattr_bench.models import load_model
from vattr_bench.models.capture import VisualAttentionCapture
from vattr_bench.models.spans import SpanSplitter
from vattr_bench.perf import PerfConfig, prepare_items
from vattr_bench.streaming import stream_attributions

PIECES = {"capture record": (VisualAttentionCapture, "record"), "splitter feed": (SpanSplitter, "feed"),
          "splitter close": (SpanSplitter, "_close"), "capture flush": (VisualAttentionCapture, "flush"),
          "attribution": (SpanAttributor, "__call__")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-family", type=int, default=2)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    model = load_model("vattr-tiny")
    estimator = load_method("amortized").load_for(model, "feature-ward", "knockout")
    seconds = dict.fromkeys(PIECES, 0.0)
    for name, (cls, attr) in PIECES.items():
        def timed(*args, _f=getattr(cls, attr), _name=name, **kwargs):  # noqa: B008 (binds this iteration's)
            start = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                seconds[_name] += time.perf_counter() - start
        setattr(cls, attr, functools.wraps(getattr(cls, attr))(timed))
    items = [(prepared, regions) for _, prepared, regions in prepare_items(model, PerfConfig(per_family=a.per_family))]
    stream_attributions(model, *items[0], estimator, 128, worker=False)  # warm-up
    seconds.update(dict.fromkeys(seconds, 0.0))
    total = tokens = spans = 0
    for prepared, regions in items:
        start = time.perf_counter()
        events = stream_attributions(model, prepared, regions, estimator, 128, worker=False)
        total += time.perf_counter() - start
        tokens, spans = tokens + events[-1].end, spans + len(events)
    print(f"{len(items)} streams, {tokens} tokens, {spans} spans, {total:.3f} s in all\n")
    print("| piece | ms in all | share of the streams' time | µs per stream |\n|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s * 1e3:.2f} | {100 * s / total:.2f}% | {s / len(items) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
