"""Where streaming's overhead goes: the same 20 test prompts generated in each mode asked for, interleaved,
medians per prompt summed (the `vattr-bench perf` method, with more modes).

    python experiments/overhead_split.py [--rounds 6] [--modes plain,again,thread] [--device cuda] [--dtype bfloat16]
                                     [--decoder 2048x24] [--busy-us 500]

On vattr-tiny by default; with --decoder, a random decoder of that size (hidden width × layers, built and
forced to write vattr-tiny's own traces as in experiments/perf_scaling.py) with a random estimator of the shipped
kind: its values do not change the cost.

--modes (all by default; plain is always run):
plain     model.generate_ids
again     plain once more: an A/A control, the noise floor of this run
streamer  an aside: plain generation handing each token to a streamer that does nothing (what transformers'
          streamer hook costs by itself)
explicit  the capture with every lse from an explicit q·Kᵀ (no fused kernel): what the kernels save
          (an aside, as "again" is: "step added" goes on from plain)
capture   + the attention-capture backend switched on (rows and lse kept)
splitter  + the streamer: span splitting per token, each closed span's records handed over (not flushed)
inline    + attribution of each span in the producer (stream_attributions(worker=False))
thread    + the background worker thread (stream_attributions, the default)
hold      asides, as "again" is: the splitter's streams with a worker thread that, instead of attributing,
release   spins --busy-us µs a span — holding the interpreter lock (hold: a Python loop) or not (release:
sleep     hashlib's sha256 over a buffer sized to take as long, which runs without the lock) — or sleeps as
          long (sleep: no CPU, no lock, only the worker's wake-ups). Does the worker cost generation the lock,
          a core, or its waking at all? (--busy-us: by default a span's attribution time measured in place,
          the median over inline streams of the prompts, once every token's head directions are kept)
wake      an aside: the splitter's streams with a worker thread that takes each span and does nothing (one
          wake-up a span, where sleep has two)
idle      an aside: the splitter's streams with a worker thread started and joined as streaming's is, which is
          handed no span (waits the whole stream): the thread's existence without its wake-ups
kept      an aside: wake's do-nothing worker as a thread started once for the whole run, not once a stream
          (its wake-ups without a thread's start and join; the stream waits for it to take its last span)
process   an aside: the same with a worker *process* started once (forked), woken through a pipe once a span:
          a wake-up that needs no interpreter lock — is it the lock's hand-over or the OS's that costs?
busyproc  an aside: that process spinning --busy-us µs a span (release's sha256): a worker's CPU time on the
          other core without the lock or a thread's wake-ups
MODE@1    any mode above with torch held to one intra-op thread while it runs (torch.set_num_threads), so that
          a worker thread has the second core to itself: e.g. plain,plain@1,thread@1,release@1

Modes run in a rotating order per prompt and round. Each mode's wall time against plain comes with a 95%
bootstrap interval over rounds (`vattr_bench.perf.overhead_interval`), and so does the calling (generating)
thread's CPU time (time.thread_time): what the producer itself spends, without the time it waits —
for the lock, or for a core the worker thread holds.
"""
import argparse
import hashlib
import multiprocessing
import queue
import statistics
import threading
import time
from unittest import mock

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from perf_scaling import random_decoder_model, write_traces
from vattr_bench.amortized import LinearEstimator, capture_options
from vattr_bench.methods import load_method
from vattr_bench.models import load_model
from vattr_bench.models.capture import backend as capture_backend
from vattr_bench.perf import PerfConfig, interval_text, overhead_interval, overhead_pct, prepare_items
from vattr_bench.streaming import SpanStreamer, stream_attributions

MODES = {"plain": "plain", "again": "plain, again (A/A)", "streamer": "plain, a streamer that does nothing",
         "explicit": "capture, explicit lse", "capture": "capture", "splitter": "capture+splitter", "inline": "inline",
         "thread": "thread", "hold": "busy worker, lock held", "release": "busy worker, lock released",
         "sleep": "worker that sleeps", "wake": "worker that does nothing", "idle": "worker handed no span",
         "kept": "worker that does nothing, one thread for the run",
         "process": "worker that does nothing, one process for the run",
         "busyproc": "busy worker, one process for the run"}  # --modes key: row label
# not a step of the pipeline: each compared with plain only
ASIDES = ("again", "streamer", "explicit", "hold", "release", "sleep", "wake", "idle", "kept", "process", "busyproc")


def busy_loops(seconds: float):
    """Two callables that each keep a core busy for ~``seconds``: one holding the interpreter lock (a
    Python loop), one releasing it (sha256 of a buffer sized here to take as long; hashlib drops the lock
    for buffers over 2 KB)."""
    def hold():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    data = bytes(1 << 22)
    start = time.perf_counter()
    for _ in range(5):
        hashlib.sha256(data).digest()
    chunk = data[:max(4096, int(len(data) * seconds / ((time.perf_counter() - start) / 5)))]
    return hold, lambda: hashlib.sha256(chunk).digest()


def answer_each_stream(conn, work) -> None:
    """A worker process's loop (a daemon: it ends with the script): wake once a span (b"s") and run ``work``;
    answer each stream's end (b"e")."""
    while True:
        if conn.recv_bytes() == b"e":
            conn.send_bytes(b"e")
        else:
            work()


class NoopStreamer(BaseStreamer):
    def put(self, value):
        pass

    def end(self):
        pass


def one_torch_thread(run):
    """``run`` with torch's intra-op pool held to one thread (restored after): the other core is left to
    whatever else runs, e.g. the streaming worker."""
    def wrapped(*args):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run(*args)
        finally:
            torch.set_num_threads(threads)
    return wrapped


def vs_plain(seconds: list, plain: list) -> str:
    """perf's overhead statistic and its interval, for per-prompt lists of each round's seconds."""
    text = interval_text(overhead_interval(seconds, plain)) or "no interval below 3 rounds"
    return f"{overhead_pct(seconds, plain):+.1f}% ({text})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--per-family", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="the model's dtype (default: as loaded, float32 for vattr-tiny)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ",".join(MODES))
    p.add_argument("--decoder", default=None, help="a random decoder of this size (HIDDENxLAYERS) instead of vattr-tiny")
    p.add_argument("--busy-us", type=float, default=None,
                   help="hold/release/sleep/busyproc: µs of busy work a span (default: a span's attribution time, measured in place)")
    a = p.parse_args()
    chosen = ["plain"] + [m for m in a.modes.split(",") if m != "plain"]
    asked = {m.removesuffix("@1") for m in chosen}
    if unknown := asked - set(MODES):
        p.error(f"unknown modes {sorted(unknown)}; choose from {','.join(MODES)}")
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

    options = capture_options(estimator.meta)  # keep what the estimator's features need, as streaming does

    def capture(prepared, regions):
        with model.capture_visual_attention(prepared, options):
            model.generate_ids(prepared, 128)

    def capture_explicit(prepared, regions):
        with mock.patch.object(capture_backend, "fused_fits", lambda *args: False):
            capture(prepared, regions)

    def splitter(prepared, regions, sink=lambda closed_span: None):
        with model.capture_visual_attention(prepared, options) as c:
            model.generate_ids(prepared, 128, streamer=SpanStreamer(model, c, sink))

    def busy_worker(work, hand_over: bool = True):
        """The splitter's streams, each closed span handed to a worker thread that runs ``work`` (with
        ``hand_over`` False: none handed over; the thread only waits)."""
        def run(prepared, regions):
            spans: queue.Queue = queue.Queue()

            def consume():
                for _ in iter(spans.get, None):
                    work()
            thread = threading.Thread(target=consume, daemon=True)
            thread.start()
            try:
                splitter(prepared, regions, spans.put if hand_over else lambda closed_span: None)
            finally:
                spans.put(None)
                thread.join()
        return run

    def kept_worker():
        """The splitter's streams, each closed span handed to one do-nothing thread that outlives the stream;
        a stream ends once that thread has taken all its spans (Queue.join)."""
        spans: queue.Queue = queue.Queue()

        def consume():
            while True:
                spans.get()
                spans.task_done()
        threading.Thread(target=consume, daemon=True).start()

        def run(prepared, regions):
            splitter(prepared, regions, spans.put)
            spans.join()
        return run

    def kept_process(work=lambda: None):
        """As kept_worker, the worker a forked process woken through a pipe (it runs no torch: forking after
        torch's threads started is safe for it)."""
        here, there = multiprocessing.get_context("fork").Pipe()
        multiprocessing.get_context("fork").Process(target=answer_each_stream, args=(there, work), daemon=True).start()

        def run(prepared, regions):
            splitter(prepared, regions, lambda closed_span: here.send_bytes(b"s"))
            here.send_bytes(b"e")
            here.recv_bytes()
        return run

    runs = {"plain": lambda prepared, regions: model.generate_ids(prepared, 128),
            "again": lambda prepared, regions: model.generate_ids(prepared, 128),
            "streamer": lambda prepared, regions: model.generate_ids(prepared, 128, streamer=NoopStreamer()),
            "explicit": capture_explicit, "capture": capture, "splitter": splitter,
            "wake": busy_worker(lambda: None), "idle": busy_worker(lambda: None, hand_over=False),
            "inline": lambda prepared, regions: stream_attributions(model, prepared, regions, estimator, 128, worker=False),
            "thread": lambda prepared, regions: stream_attributions(model, prepared, regions, estimator, 128)}
    for mode, make in (("kept", kept_worker), ("process", kept_process)):  # each starts its worker: only if asked
        if mode in asked:
            runs[mode] = make()
    if {"hold", "release", "sleep", "busyproc"} & asked:
        def inline_spans():
            return [e.attribution_s for item in items for e in stream_attributions(model, *item, estimator, 128, worker=False)]
        if a.busy_us is not None:
            busy_s = a.busy_us * 1e-6
        else:
            inline_spans()  # the first pass computes the head directions a process keeps
            busy_s = statistics.median(inline_spans())
        runs["hold"], runs["release"] = map(busy_worker, busy_loops(busy_s))
        runs["sleep"] = busy_worker(lambda: time.sleep(busy_s))
        if "busyproc" in asked:
            runs["busyproc"] = kept_process(busy_loops(busy_s)[1])
        print(f"busy workers: {busy_s * 1e6:.0f} µs of work a span")
    modes = {MODES[m]: runs[m] for m in MODES if m in chosen}  # pipeline order, by label
    modes.update({f"{MODES[m]}, one torch thread": one_torch_thread(runs[m]) for m in MODES if f"{m}@1" in chosen})
    for run in modes.values():  # warm-up
        run(*items[0])
    names = list(modes)
    wall = {k: [[] for _ in items] for k in modes}
    cpu = {k: [[] for _ in items] for k in modes}  # the generating thread's CPU seconds
    for r in range(a.rounds):
        for i, item in enumerate(items):
            shift = (r + i) % len(names)
            for name in names[shift:] + names[:shift]:
                start, start_cpu = time.perf_counter(), time.thread_time()
                modes[name](*item)
                wall[name][i].append(time.perf_counter() - start)
                cpu[name][i].append(time.thread_time() - start_cpu)
    total = {k: sum(statistics.median(x) for x in v) for k, v in wall.items()}
    print(f"{model.name} on {model.device} in {model.model.dtype}, {len(items)} prompts, {a.rounds} rounds\n\n"
          "| mode | seconds | vs plain (95% interval) | step added | generating thread's CPU vs plain (95% interval) |\n"
          "|---|---|---|---|---|")
    previous = total["plain"]
    asides = [MODES[m] for m in ASIDES] + [name for name in total if name.endswith("one torch thread")]
    for name, t in total.items():
        step = "—" if name in asides else f"{100 * (t - previous) / total['plain']:+.1f}%"
        print(f"| {name} | {t:.3f} | {vs_plain(wall[name], wall['plain'])} | {step} | {vs_plain(cpu[name], cpu['plain'])} |")
        if name not in asides:
            previous = t


if __name__ == "__main__":
    main()
