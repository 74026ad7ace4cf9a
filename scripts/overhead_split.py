"""Where streaming's overhead goes: the same 20 test prompts generated in five modes, interleaved,
medians per prompt summed (the `vattr-bench perf` method, with more modes).

    python scripts/overhead_split.py [--rounds 6] [--device cuda]

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

from vattr_bench.methods import load_method
from vattr_bench.models import attention_capture, load_model
from vattr_bench.perf import PerfConfig, prepare_items
from vattr_bench.streaming import SpanStreamer, stream_attributions


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--per-family", type=int, default=4)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    model = load_model("vattr-tiny", device=a.device)
    estimator = load_method("amortized").load_for(model, "feature-ward", "knockout")
    items = [(prepared, regions) for _, prepared, regions in prepare_items(model, PerfConfig(per_family=a.per_family))]

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
    print(f"{model.name} on {model.device}\n\n| mode | seconds ({len(items)} prompts) | vs plain | step added |\n|---|---|---|---|")
    previous = total["plain"]
    for name, t in total.items():
        print(f"| {name} | {t:.3f} | {100 * (t / total['plain'] - 1):+.1f}% | {100 * (t - previous) / total['plain']:+.1f}% |")
        previous = t


if __name__ == "__main__":
    main()
