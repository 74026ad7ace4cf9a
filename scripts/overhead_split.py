"""Where streaming's overhead goes: the same 20 test prompts generated in six modes, interleaved,
medians per prompt summed (the `vattr-bench perf` method, with more modes).

    python scripts/overhead_split.py [--rounds 6] [--device cuda] [--dtype bfloat16] [--decoder 2048x24]

On vattr-tiny by default; with --decoder, a random decoder of that size (hidden width × layers, built and
forced to write vattr-tiny's own traces as in scripts/perf_scaling.py) with a random estimator of the shipped
kind: its values do not change the cost.

plain            model.generate_ids
capture, explicit lse   the capture with every lse from an explicit q·Kᵀ (no fused kernel): what the
                 kernels save ("step added" on the next row, negative)
capture          + the attention-capture backend switched on (rows and lse kept)
capture+splitter + the streamer: span splitting per token, each closed span's records handed over (not flushed)
inline           + attribution of each span in the producer (stream_attributions(worker=False))
thread           + the background worker thread (stream_attributions, the default)
"""
import argparse
import statistics
import time
from unittest import mock

import numpy as np
import torch

from perf_scaling import random_decoder_model, write_traces
from vattr_bench.amortized import LinearEstimator
from vattr_bench.methods import load_method
from vattr_bench.models import attention_capture, load_model
from vattr_bench.perf import PerfConfig, prepare_items
from vattr_bench.streaming import SpanStreamer, stream_attributions


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--per-family", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="the model's dtype (default: as loaded, float32 for vattr-tiny)")
    p.add_argument("--decoder", default=None, help="a random decoder of this size (HIDDENxLAYERS) instead of vattr-tiny")
    a = p.parse_args()
    model = load_model("vattr-tiny", device=a.device, dtype=a.dtype)
    estimator = load_method("amortized").load_for(model, "feature-ward", "knockout")
    cfg = PerfConfig(per_family=a.per_family)
    if a.decoder:
        traces = {tuple(prepared.inputs["input_ids"][0].tolist()): model.generate_ids(prepared, 128)
                  for _, prepared, _ in prepare_items(model, cfg)}
        model = random_decoder_model(*map(int, a.decoder.split("x")), device=a.device,
                                     dtype=getattr(torch, a.dtype) if a.dtype else None)
        write_traces(model, traces)
        n_weights = model.num_layers * model.num_heads
        estimator = LinearEstimator(np.random.default_rng(0).normal(size=n_weights), 0.0, estimator.meta)
    items = [(prepared, regions) for _, prepared, regions in prepare_items(model, cfg)]

    def capture(prepared, regions):
        with model.capture_visual_attention(prepared):
            model.generate_ids(prepared, 128)

    def capture_explicit(prepared, regions):
        with mock.patch.object(attention_capture, "_fused_fits", lambda *args: False):
            capture(prepared, regions)

    def splitter(prepared, regions):
        with model.capture_visual_attention(prepared) as c:
            model.generate_ids(prepared, 128, streamer=SpanStreamer(model, c, lambda item: None))

    modes = {"plain": lambda prepared, regions: model.generate_ids(prepared, 128),
             "capture, explicit lse": capture_explicit, "capture": capture,
             "capture+splitter": splitter,
             "inline": lambda prepared, regions: stream_attributions(model, prepared, regions, estimator, 128, worker=False),
             "thread": lambda prepared, regions: stream_attributions(model, prepared, regions, estimator, 128)}
    for run in modes.values():  # warm-up
        run(*items[0])
    seconds = {k: [[] for _ in items] for k in modes}
    for _ in range(a.rounds):
        for i, item in enumerate(items):
            for name, run in modes.items():
                start = time.perf_counter()
                run(*item)
                seconds[name][i].append(time.perf_counter() - start)
    total = {k: sum(statistics.median(x) for x in v) for k, v in seconds.items()}
    print(f"{model.name} on {model.device} in {model.model.dtype}\n\n| mode | seconds ({len(items)} prompts) | vs plain | step added |\n|---|---|---|---|")
    previous = total["plain"]
    for name, t in total.items():
        print(f"| {name} | {t:.3f} | {100 * (t / total['plain'] - 1):+.1f}% | {100 * (t - previous) / total['plain']:+.1f}% |")
        previous = t


if __name__ == "__main__":
    main()
