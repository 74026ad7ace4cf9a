"""`vattr-bench perf`: what streaming attribution costs, measured in one run as ratios on the same spans.

1. Overhead — wall time of generation with streaming attribution (capture + worker, until the last
   event is out) vs the same `generate` call without, on the same prompts, interleaved in rounds
   (medians per sample, then summed), with each round's own overhead as the spread and a 95% bootstrap
   interval over rounds (`overhead_interval`); also with attribution inline in the producer (no thread),
   to show how much of the overhead is the thread.
2. Lag — seconds from a span's last token to its event, in units of the median decode step.
3. Cost per span on the same spans — amortized (the worker's whole work: write the span's captured rows
   into the buffers, weights, pooling, estimator, and its share of reading the prompt's visual keys and
   value norms once per stream; what the capture adds inside generation is what (1) measures) vs each
   Captum gradient baseline and the paper's AttnLRP and TAM vs exhaustive ablation (K forward passes,
   batched as `evaluate` runs them).
   Logit-weighted features also read each token's head directions W_O^hᵀu_t, which depend on the weights
   only and are kept per model across streams (`LogitReadout.head_directions`): the amortized row finds
   them kept, as a long-running process would (the rows that depend on the prompt are computed again every
   pass); the row "amortized, first stream" times the same passes with none kept at the start. Those
   passes replay each stream's records, back to back; the row "amortized, in the stream" is the same work
   timed in place, each span's attribution between decode steps in (1)'s inline streams (each prompt's
   best round, as the replayed rows take each stream's best pass) — dearer on vattr-tiny (docs/performance.md).
4. Per-token attribution cost at trace lengths 256 / 1024 / 4096: a real trace's tokens repeated to the
   length, teacher-forced; gradient baselines, AttnLRP and TAM timed on a few evenly spaced spans (they grow
   with length), each with its peak memory (above the call's start: GPU memory allocated on an accelerator,
   the process's resident memory sampled every 2 ms on the CPU).
"""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy.stats import bootstrap
from tqdm.auto import tqdm

from .amortized import LOGIT_FEATURES, LinearEstimator, SpanAttributor, capture_options, feature_kind, feature_label
from .benchmarks import resolve_families, synthetic_sample
from .methods import AttributionContext
from .methods.amortized import Amortized
from .methods.attnlrp import AttnLRPMethod
from .methods.gradients import InputXGradientMethod, IntegratedGradientsMethod, SaliencyMethod
from .methods.tam import TAMMethod
from .metrics.cost import PeakMemory
from .models.random_init import force_reference_traces
from .models.spans import split_spans
from .regions import make_regions, single_region_effects
from .streaming import SpanStreamer, one_blas_thread, stream_attributions
from .types import Trace

logger = logging.getLogger(__name__)

GRADIENT_METHODS = (SaliencyMethod, InputXGradientMethod, IntegratedGradientsMethod)
PAPER_BASELINES = (AttnLRPMethod, TAMMethod)  # the seed paper's strongest competitors
BASELINE_METHODS = GRADIENT_METHODS + PAPER_BASELINES  # what perf times beside amortized and ablation
FIRST_STREAM = "amortized, first stream"  # the per-span row with no head directions kept yet
IN_STREAM = "amortized, in the stream"  # the per-span row timed in place, in (1)'s inline streams


@dataclass
class PerfConfig:
    benchmark: str = "all"
    per_family: int = 2
    rounds: int = 5
    lengths: tuple[int, ...] = (256, 1024, 4096)
    gradient_spans: int = 3  # spans timed per gradient baseline at each length
    regions: str = "feature-ward"
    k: int = 16
    ablation: str = "knockout"
    max_new_tokens: int = 128
    seed: int = 0
    estimator: str | None = None  # estimator JSON (or a LinearEstimator); None: $VATTR_ESTIMATOR, else the shipped one
    force_reference_traces: bool = False  # a random-weight model writes each sample's reference trace (random_init)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def _trim_heap() -> None:
    """Hand freed heap back to the system (glibc), so that memory an earlier call left in the allocator's
    pool does not hide what the next call needs from a resident-memory peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may read low after a bigger call
        pass


def _timed_peak(model, fn, *args) -> tuple[float, float]:
    """(seconds, peak MB above the start) of one call: memory allocated on the model's GPU, else this
    process's resident memory sampled while it runs (`metrics.cost.PeakMemory`)."""
    device = torch.device(getattr(model, "device", "cpu"))
    _trim_heap()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        seconds = _timed(fn, *args)[0]
        torch.cuda.synchronize(device)
        return seconds, (torch.cuda.max_memory_allocated(device) - start) / 2**20
    with PeakMemory() as peak:
        fn(*args)
    return peak.seconds, peak.peak_mb


def _worker_pass(model, prepared, regions, estimator, trace: Trace | None = None, max_new_tokens: int = 128):
    """The streaming worker's whole work on one trace, as a callable to time again and again: once per
    trace, read the prompt's visual keys (and value norms); per span, write its captured rows into the
    buffers and attribute it. Without ``trace``, the rows are what generation with the streamer hands
    over, span by span, as in a stream; with one, what a teacher-forced pass over it records (lengths
    generation does not reach). Returns (callable, spans)."""
    with model.capture_visual_attention(prepared, capture_options(estimator.meta)) as capture:
        if trace is None:
            closed = []
            model.generate_ids(prepared, max_new_tokens,
                               streamer=SpanStreamer(model, capture, closed.append))
            work = [(c.records, c.span, c.token_ids) for c in closed]
        else:
            model.token_logprobs(prepared, trace.token_ids)
            ids = list(trace.token_ids)
            work = [(capture.take_pending() if i == 0 else [], span, ids[span.start:span.end])
                    for i, span in enumerate(trace.spans)]

    def run(first_stream: bool = False):
        capture.clear_reads()  # a stream reads the prompt once, so every pass does
        attributor = SpanAttributor(capture, regions, estimator)
        nothing_kept = capture.readout.nothing_kept() if first_stream and capture.readout else nullcontext()
        with one_blas_thread(), nothing_kept:  # BLAS as in a stream
            for records, span, ids in work:
                capture.flush(records)  # rewrites the same rows each pass
                attributor(span.start, span.end, ids)

    return run, [span for _, span, _ in work]


def _best_seconds(passes: dict, rounds: int = 5, min_total_s: float = 0.25) -> dict:
    """Each pass's best time, timed in interleaved rounds: at least ``rounds``, and as many more as fit in
    ``min_total_s``. A short pass takes a few ms, where one scheduler hiccup would otherwise decide the
    number, and interleaving makes a slow spell of the machine hit every pass alike, not one of them."""
    best, total, done = dict.fromkeys(passes, float("inf")), 0.0, 0
    while done < rounds or total < min_total_s:
        for key, run in passes.items():
            elapsed = _timed(run)[0]
            best[key], total = min(best[key], elapsed), total + elapsed
        done += 1
    return best


def prepare_items(model, cfg: PerfConfig) -> list:
    """(sample, prepared input, regions) for the test samples perf times."""
    samples = [synthetic_sample(f, i, "test", cfg.seed) for f in resolve_families(cfg.benchmark) for i in range(cfg.per_family)]
    items = []
    for s in tqdm(samples, desc="prepare", unit="sample"):
        prepared = model.prepare(s.image, s.prompt)
        regions, _ = make_regions(cfg.regions, model, prepared, k=cfg.k, sample=s)
        items.append((s, prepared, regions))
    return items


def warm_up(model, items, estimator, cfg: PerfConfig, methods=BASELINE_METHODS) -> None:
    """Untimed first calls: they pay for lazy imports, allocator growth and kernel selection."""
    s, prepared, regions = items[0]
    stream_attributions(model, prepared, regions, estimator, cfg.max_new_tokens)
    trace = model.generate(prepared, max_new_tokens=cfg.max_new_tokens)
    warm = AttributionContext(model, s, prepared, Trace(trace.token_ids, trace.text, trace.spans[:1], trace.logprobs, ""),
                              regions, cfg.ablation, cfg.seed)
    for method in methods:
        method().attribute(warm)


def measure_streaming(model, items, estimator, cfg: PerfConfig) -> dict:
    """1-2: generation with and without streaming attribution (and with it inline), interleaved in rounds
    on the same prompts, medians per prompt summed; the lag of every event."""
    modes = ("plain", "stream", "inline")  # inline: attribution in the producer, no worker thread
    seconds = {mode: [[] for _ in items] for mode in modes}
    lags, steps, tokens = [], [], [0] * len(items)
    in_place = [[] for _ in items]  # per prompt: each inline round's attribution seconds, its spans summed
    n_spans = [0] * len(items)
    for r in tqdm(range(cfg.rounds), desc="overhead rounds"):
        for i, (_, prepared, regions) in enumerate(items):
            shift = (r + i) % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                if mode == "plain":
                    elapsed, ids = _timed(model.generate_ids, prepared, cfg.max_new_tokens)
                    steps.append(elapsed / max(1, len(ids) + 1))  # +1: the step that chose end-of-sequence
                    tokens[i] = len(ids) + 1
                else:
                    elapsed, events = _timed(stream_attributions, model, prepared, regions, estimator, cfg.max_new_tokens,
                                             worker=mode == "stream")
                    if mode == "stream":
                        lags.extend(e.lag_s for e in events)
                    else:  # inline: each span's attribution timed in place, between decode steps
                        in_place[i].append(sum(e.attribution_s for e in events))
                        n_spans[i] = len(events)
                seconds[mode][i].append(elapsed)
    total = {mode: sum(statistics.median(x) for x in seconds[mode]) for mode in modes}
    # the spread: each round's own overhead (all prompts once), so a reader sees how far one number goes
    per_round = [100.0 * (sum(s[r] for s in seconds["stream"]) / sum(s[r] for s in seconds["plain"]) - 1)
                 for r in range(cfg.rounds)]
    interval = overhead_interval(seconds["stream"], seconds["plain"], seed=cfg.seed)
    step_s = statistics.median(steps)
    lag_s = statistics.median(lags) if lags else float("nan")  # nan: no span closed (a random model, say)
    return {"generation_s": {"plain": total["plain"], "streaming": total["stream"], "inline": total["inline"]},
            "overhead_pct": overhead_pct(seconds["stream"], seconds["plain"]),
            "overhead_pct_rounds": (min(per_round), max(per_round)), "overhead_pct_ci95": interval,
            "overhead_us_per_token": 1e6 * (total["stream"] - total["plain"]) / sum(tokens),  # what carries over
            "tokens": sum(tokens), "decode_step_s": step_s, "lag_s_median": lag_s, "lag_decode_steps": lag_s / step_s,
            # each prompt's best round, as the replayed amortized row takes each stream's best pass
            "in_stream_s_per_span": sum(min(x) for x in in_place) / sum(n_spans) if sum(n_spans) else float("nan")}


def overhead_pct(stream, plain) -> float:
    """The overhead in percent from per-prompt lists of each round's seconds: each prompt's median round,
    summed over prompts, streaming against plain — one definition for the number and its interval."""
    return float(100.0 * (np.median(stream, 1).sum() / np.median(plain, 1).sum() - 1))


def overhead_interval(stream: list, plain: list, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of `overhead_pct` from per-prompt lists of each round's seconds: whole rounds are
    resampled, so the modes of a prompt timed side by side stay paired and a round the machine ran slow in
    counts once, in every prompt. (nan, nan) below 3 rounds."""
    stream, plain = np.asarray(stream, dtype=float), np.asarray(plain, dtype=float)  # (prompts, rounds)
    if stream.shape[1] < 3:
        return float("nan"), float("nan")

    result = bootstrap((np.arange(stream.shape[1]),), lambda rounds: overhead_pct(stream[:, rounds], plain[:, rounds]),
                       vectorized=False, n_resamples=2000, confidence_level=confidence, method="percentile", rng=seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def interval_text(interval) -> str:
    """An `overhead_interval` as "+1.8 % to +6.4 %"; "" where there is none (below 3 rounds, or a report
    saved before perf had intervals: None)."""
    if interval is None or not np.isfinite(interval).all():
        return ""
    return f"{interval[0]:+.1f} % to {interval[1]:+.1f} %"


def cost_per_span(model, items, estimator, cfg: PerfConfig, methods=BASELINE_METHODS) -> tuple[dict, int]:
    """3: seconds per span on the same spans (each sample's greedy trace): amortized (the worker's work)
    vs exhaustive ablation (K forward passes, batched as `evaluate` runs them) vs each baseline method."""
    # the logit kinds: also the process's first stream, no token's head directions kept yet (module docstring)
    amortized = ("amortized", FIRST_STREAM) if feature_kind(estimator.meta) in LOGIT_FEATURES else ("amortized",)
    per_span = {**dict.fromkeys(amortized, 0.0), "ablation": 0.0, **{m.name: 0.0 for m in methods}}
    n_spans = 0
    for s, prepared, regions in tqdm(items, desc="cost per span", unit="sample"):
        trace = model.generate(prepared, max_new_tokens=cfg.max_new_tokens)
        if not trace.spans:
            continue
        worker, spans = _worker_pass(model, prepared, regions, estimator, max_new_tokens=cfg.max_new_tokens)
        if [(sp.start, sp.end) for sp in spans] != [(sp.start, sp.end) for sp in trace.spans]:
            raise RuntimeError("streamed generation closed other spans than the offline trace has")
        passes = {"amortized": worker, FIRST_STREAM: partial(worker, first_stream=True)}
        for key, seconds in _best_seconds({key: passes[key] for key in amortized}).items():
            per_span[key] += seconds
        n_spans += len(trace.spans)
        per_span["ablation"] += _timed(single_region_effects, model, prepared, trace, regions, cfg.ablation)[0]
        ctx = AttributionContext(model, s, prepared, trace, regions, cfg.ablation, cfg.seed)
        for method in methods:
            per_span[method.name] += _timed(method().attribute, ctx)[0]
    if not n_spans:
        raise ValueError("no sample's trace had a span to time")
    return {k: v / n_spans for k, v in per_span.items()}, n_spans


def per_token_cost(model, items, estimator, cfg: PerfConfig, peak_mb: dict | None = None) -> dict[str, dict[int, float]]:
    """4: per-token attribution cost at each trace length: a real trace's thinking sentences repeated to
    the length, teacher-forced; the baselines timed on a few evenly spaced spans. ``peak_mb``, if given,
    gets each baseline's peak memory per length (MB above the call's start, `_timed_peak`)."""
    s, prepared, regions = items[0]
    base = model.generate(prepared, max_new_tokens=cfg.max_new_tokens)
    thinking = [sp for sp in base.spans if not sp.is_answer]
    if not thinking:
        raise ValueError(f"the model wrote no thinking sentence to repeat into long traces (trace: {base.text!r})")
    # the thinking sentences repeated to length (repeating the answer would make one giant answer span)
    prefix, body = base.token_ids[:thinking[0].start], base.token_ids[thinking[0].start:thinking[-1].end]
    traces = {}
    for length in cfg.lengths:
        ids = (prefix + body * (length // len(body) + 1))[:length]
        traces[length] = Trace(ids, model.decode(ids), split_spans(ids, model.decode), np.zeros(len(ids)), "")
    # amortized: every length's pass timed in the same interleaved rounds, so the ratio compares like with like
    best = _best_seconds({n: _worker_pass(model, prepared, regions, estimator, trace=t)[0] for n, t in traces.items()},
                         rounds=15, min_total_s=3.0)
    per_token: dict[str, dict[int, float]] = {
        "amortized": {n: best[n] / sum(sp.end - sp.start for sp in t.spans) for n, t in traces.items()},
        **{m.name: {} for m in BASELINE_METHODS}}
    peak_mb = {} if peak_mb is None else peak_mb
    for length, trace in tqdm(traces.items(), desc="trace lengths (baselines)"):
        spans = trace.spans
        picked = [spans[i] for i in np.linspace(0, len(spans) - 1, cfg.gradient_spans).round().astype(int)]
        sub = Trace(trace.token_ids, trace.text, picked, trace.logprobs, "")
        ctx = AttributionContext(model, s, prepared, sub, regions, cfg.ablation, cfg.seed)
        for method in BASELINE_METHODS:
            elapsed, peak_mb.setdefault(method.name, {})[length] = _timed_peak(model, method().attribute, ctx)
            per_token[method.name][length] = elapsed / sum(sp.end - sp.start for sp in picked)
    return per_token


def run_perf(model, cfg: PerfConfig) -> dict:
    estimator = cfg.estimator if isinstance(cfg.estimator, LinearEstimator) else \
        Amortized(cfg.estimator).load_for(model, cfg.regions, cfg.ablation)
    torch.manual_seed(cfg.seed)
    items = prepare_items(model, cfg)
    if cfg.force_reference_traces:
        force_reference_traces(model, [(s, prepared) for s, prepared, _ in items])
    warm_up(model, items, estimator, cfg)
    streaming = measure_streaming(model, items, estimator, cfg)
    per_span, n_spans = cost_per_span(model, items, estimator, cfg)
    per_span[IN_STREAM] = streaming.pop("in_stream_s_per_span")
    fastest_gradient = min(GRADIENT_METHODS, key=lambda m: per_span[m.name]).name
    peak_mb: dict[str, dict[int, float]] = {}
    per_token = per_token_cost(model, items, estimator, cfg, peak_mb)
    lo, hi = min(cfg.lengths), max(cfg.lengths)
    summary = {
        "overhead_pct": round(streaming["overhead_pct"], 2),
        "lag_decode_steps": round(streaming["lag_decode_steps"], 3),
        "speedup_vs_fastest_gradient": round(per_span[fastest_gradient] / per_span["amortized"], 1),
        "speedup_vs_ablation": round(per_span["ablation"] / per_span["amortized"], 1),
        f"amortized_cost_ratio_{hi}_vs_{lo}": round(per_token["amortized"][hi] / per_token["amortized"][lo], 3),
    }
    shown = "random (timing only)" if isinstance(cfg.estimator, LinearEstimator) else cfg.estimator
    report = {"config": {**cfg.__dict__, "estimator": shown}, "model": model.name, "device": str(getattr(model, "device", "cpu")),
              "dtype": str(getattr(model, "dtype", "float32")).removeprefix("torch."),
              "features": feature_label(estimator.meta) + (", RANDOM weights: timing only" if estimator.meta.get("random_weights") else ""),
              "decoder_parameters": sum(p.numel() for p in model.model.model.language_model.parameters())
              if hasattr(model, "model") else None,
              "reference_traces_forced": cfg.force_reference_traces,
              "n_samples": len(items), "n_spans": n_spans,
              **{k: v for k, v in streaming.items() if k not in ("overhead_pct", "lag_decode_steps")},
              "per_span_s": per_span, "fastest_gradient": fastest_gradient, "per_token_s": per_token,
              "per_token_peak_mb": peak_mb, "summary": summary}
    logger.info(format_perf(report))
    return report


def format_perf(report: dict) -> str:
    ps, pt, g = report["per_span_s"], report["per_token_s"], report["generation_s"]
    lengths = sorted(next(iter(pt.values())))
    lines = [
        f"vattr-bench perf — {report['model']} on {report.get('device', 'cpu')}, {report.get('dtype', 'float32')} "
        f"({report['features']} estimator), {report['n_samples']} samples, {report['n_spans']} spans, one run"
        + (f"; decoder {report['decoder_parameters'] / 1e6:.1f} M parameters" if report.get("decoder_parameters") else "")
        + ("; each sample's reference trace forced (random weights)" if report.get("reference_traces_forced") else ""),
        "",
        "| streaming | value |",
        "|---|---|",
        f"| generation without attribution | {g['plain']:.3f} s |",
        f"| generation with streaming attribution | {g['streaming']:.3f} s |",
        f"| overhead | {report['summary']['overhead_pct']:+.2f} % = {report['overhead_us_per_token']:+.0f} µs per generated token "
        f"(decode step {report['decode_step_s'] * 1e3:.2f} ms) |",
        "| overhead of single rounds (every prompt once), lowest – highest | "
        + " – ".join(f"{x:+.1f} %" for x in report["overhead_pct_rounds"]) + " |",
        f"| overhead, 95% interval (bootstrap over rounds) | "
        f"{interval_text(report['overhead_pct_ci95']) or 'n/a (needs 3 rounds or more)'} |",
        f"| of which without the worker thread (capture, span splitting, attribution inline) | "
        f"{100 * (g['inline'] - g['plain']) / g['plain']:+.2f} % |",
        f"| median lag span end → event | {report['lag_s_median'] * 1e3:.3f} ms = "
        f"{report['summary']['lag_decode_steps']:.3f} decode steps |",
        "",
        "| method | seconds per span | amortized is faster by |",
        "|---|---|---|",
    ]
    for name, seconds in sorted(ps.items(), key=lambda kv: kv[1]):
        ratio = seconds / ps["amortized"]
        lines.append(f"| {name} | {seconds:.2e} | {ratio:.{1 if ratio < 10 else 0}f}× |")
    lines += ["", "| method | " + " | ".join(f"s/token @ {n}" for n in lengths) + f" | {lengths[-1]} vs {lengths[0]} |",
              "|---|" + "---|" * (len(lengths) + 1)]
    for name, row in pt.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[n]:.2e}" for n in lengths) + f" | {row[lengths[-1]] / row[lengths[0]]:.2f}× |")
    peaks = report.get("per_token_peak_mb") or {}  # reports saved before perf measured memory have none
    if peaks:
        lines += ["", "| method | " + " | ".join(f"peak MB @ {n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        lines += [f"| {name} | " + " | ".join(f"{row[n]:.0f}" for n in lengths) + " |" for name, row in peaks.items()]
    lines += ["", json.dumps(report["summary"])]
    return "\n".join(lines)
