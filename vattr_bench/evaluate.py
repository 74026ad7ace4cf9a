"""`vattr-bench evaluate`: run attribution methods on the same samples, score them against ablation.

Per sample: the model's own greedy trace, the regions, and the ablation ground truth — exhaustive
single-region Δ (n_spans, K) and Δ(S, v) for random subsets v — are computed once and cached on disk
(keyed by model, protocol, operator and seed), so every method, and every resumed run, shares them.
Each (sample, method) result is appended to ``samples.jsonl`` as soon as it exists; a rerun after a
kill skips what is there, and a method whose `settings()` changed since the folder's earlier scores is not
run again there (`_SettingsLedger`). A method that raises, returns a bad array or runs past its time limit is
recorded as failed for that sample, and the other methods go on.

Integrity: each method gets its own copy of the sample's context (`_method_context`), without the ground truth
unless it declares ``reads_ground_truth`` (then it is a reference, never ranked); the scores are computed from
the harness's own arrays, which no method ever holds.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import signal
import threading
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .benchmarks import SOURCES, SPLITS, load_samples, resolve_families
from .distributed import Ranks, finish, merge_shards, read_all_records
from .heatmaps import save_heatmap_png, save_tradeoff_png
from .methods import AttributionContext, is_reference, load_method, reads_ground_truth
from .metrics import RANKING_METRIC, score_spans
from .metrics.cost import PeakMemory
from .models import load_model
from .regions import OPERATORS, PROTOCOLS, ground_truth, make_regions, subset_seed
from .regions.protocols import K_RANGE
from .results import build_results, format_table, read_records
from .storage import load_arrays, save_arrays, write_text_atomically
from .types import validate_attribution

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: str = "vattr-tiny"
    methods: list[str] = field(default_factory=lambda: ["attention", "random"])
    benchmark: str = "all"
    limit: int = 20
    output_dir: str = "runs/evaluate"
    regions: str = "feature-ward"
    k: int = 16
    ablation: str = "knockout"
    seed: int = 0
    n_subsets: int = 32
    split: str = "test"
    region_backbone: str | None = None
    save_heatmaps: bool = False
    max_new_tokens: int = 128
    source: str = "synthetic"
    real_set: str | None = None
    data: str | None = None
    device: str = "cpu"  # where the model runs; not part of the ground-truth key (the same numbers, up to rounding)
    dtype: str | None = None  # the weights' dtype (None: the checkpoint's); part of the key when set
    method_timeout_s: float | None = 600.0  # per method and sample; past it the method fails on that sample
    # big models: accelerate's placement (load_model's device_map / max_memory / offload_folder); not in the key
    device_map: str | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None

    def validate(self) -> list[str]:
        families = resolve_families(self.benchmark)
        if self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.regions not in PROTOCOLS:
            raise ValueError(f"unknown region protocol {self.regions!r}; choose from {', '.join(PROTOCOLS)}")
        if self.ablation not in OPERATORS:
            raise ValueError(f"unknown ablation operator {self.ablation!r}; choose from {', '.join(OPERATORS)}")
        if not K_RANGE[0] <= self.k <= K_RANGE[1]:
            raise ValueError(f"--k {self.k} is outside {K_RANGE[0]}–{K_RANGE[1]}")
        if self.n_subsets < 2:
            raise ValueError("--n-subsets must be at least 2 (LDS is a rank correlation over subsets)")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}")
        if not self.methods:
            raise ValueError("no method given")
        if self.method_timeout_s is not None and self.method_timeout_s <= 0:
            raise ValueError(f"--method-timeout must be positive, got {self.method_timeout_s}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose from {', '.join(SOURCES)}")
        if self.source == "real" and (self.data or self.real_set) and len(families) != 1:
            raise ValueError("--data / --real-set name one set: give a single --benchmark with them")
        return families

    def ground_truth_key(self) -> str:
        """What the cached traces, regions and ablation effects depend on."""
        key = {k: getattr(self, k) for k in ("model", "regions", "k", "ablation", "seed", "n_subsets", "split",
                                             "region_backbone", "max_new_tokens", "source", "real_set", "data")}
        key["subsets"] = "per-sample"  # random subsets drawn per sample (`subset_seed`), not once per run
        if self.dtype is not None:  # only when set, so runs made before the option keep their key
            key["dtype"] = self.dtype
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def evaluate(cfg: EvalConfig) -> dict:
    """Score every method on every sample; under a distributed launch (torchrun, accelerate launch) each rank
    scores its share of the samples and rank 0 merges (`vattr_bench.distributed`)."""
    families = cfg.validate()
    out = Path(cfg.output_dir)
    methods = _load_methods(cfg.methods)  # every name checked before any work, so a typo costs nothing
    ranks = Ranks.from_env(cfg.device)
    model = load_model(cfg.model, device=ranks.device(cfg.device), dtype=cfg.dtype, device_map=cfg.device_map,
                       max_memory=cfg.max_memory, offload_folder=cfg.offload_folder)
    ranks.on_main(lambda: _claim_output_dir(out, cfg), str(out))  # rank 0 makes and claims the folder
    samples_path = out / "samples.jsonl"
    sink_path = ranks.shard_path(samples_path)
    sink_path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_all_records(samples_path)
    if sink_path.is_file():  # drop a line torn by a killed run, so appends start on a clean line
        write_text_atomically(sink_path, "".join(json.dumps(r) + "\n" for r in read_records(sink_path)))
    done = {(r["benchmark"], r["sample_id"], r["method"]) for r in previous}
    by_sample: dict[tuple[str, str], list[dict]] = {}  # every method's records, for the per-sample pictures
    for r in previous:
        by_sample.setdefault((r["benchmark"], r["sample_id"]), []).append(r)
    cache_dir = out / "cache" / cfg.ground_truth_key()
    cache_dir.mkdir(parents=True, exist_ok=True)
    ledger, stopped = _SettingsLedger(out / "run.json", persist=ranks.is_main), {}
    with open(sink_path, "a", encoding="utf-8") as sink:
        for family in families:
            samples = ranks.shard(load_samples(family, cfg.limit, cfg.source, cfg.split, cfg.seed, cfg.data,
                                               cfg.real_set))
            for sample in tqdm(samples, desc=f"evaluate {family}" + (f" [rank {ranks.rank}]" if ranks.distributed
                                                                      else ""), unit="sample"):
                todo = [m for m in methods if (family, sample.id, m.name) not in done]
                picture = out / "heatmaps" / family / f"{sample.id}.png"
                if not todo and not (cfg.save_heatmaps and not picture.is_file()):
                    continue
                try:
                    shared = _sample_context(model, sample, cfg, cache_dir)
                except Exception as e:  # an unusable sample is recorded for every method, and the run goes on
                    logger.warning(f"sample {sample.id} skipped: {type(e).__name__}: {e}")
                    for method in todo:
                        sink.write(json.dumps({"benchmark": family, "sample_id": sample.id, "method": method.name,
                                               "n_spans": 0, "rank": ranks.rank,
                                               "error": f"sample: {type(e).__name__}: {e}"}) + "\n")
                    sink.flush()
                    continue
                for method in todo:
                    if method.name in stopped:
                        continue
                    record = {**_run_method(method, shared, family, cfg.method_timeout_s), "rank": ranks.rank}
                    if "error" not in record and (problem := ledger.check(method)):
                        stopped[method.name] = problem  # its earlier scores here came from other settings
                        logger.warning(problem)
                        continue
                    by_sample.setdefault((family, sample.id), []).append(record)
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
                if cfg.save_heatmaps:
                    _save_sample_heatmaps(picture, shared, by_sample.get((family, sample.id), []))
    # every rank's settings and stops reach rank 0, which merges the shards and writes the results
    gathered = ranks.gather((ledger.recorded, stopped))
    if ranks.is_main:
        for recorded, rank_stopped in gathered[1:]:
            ledger.merge(recorded)
            stopped.update(rank_stopped)
        records = merge_shards(samples_path) if ranks.distributed else read_records(samples_path)
        results = _write_results(cfg, out, methods, ledger, stopped, records, ranks)
    ranks.barrier()
    if not ranks.is_main:
        results = json.loads((out / "results.json").read_text())
    finish(ranks)
    return results


def _write_results(cfg: EvalConfig, out: Path, methods, ledger: "_SettingsLedger", stopped: dict, records: list[dict],
                   ranks: Ranks) -> dict:
    # what else decided a method's scores in this folder (e.g. the amortized estimator's file), this run's
    # or, for a method with nothing left to score, the run's that scored it
    settings = {m.name: ledger.recorded[m.name] for m in methods if ledger.recorded.get(m.name)}
    config = {**asdict(cfg), "methods": [m.name for m in methods], "r2": "squared Pearson correlation",
              "method_errors": stopped, "method_settings": settings, "world_size": ranks.world_size}
    results = build_results(cfg.model, config, records)
    write_text_atomically(out / "results.json", json.dumps(results, indent=1))
    logger.info(format_table(results))
    try:  # the picture is a view of results.json, written above either way
        save_tradeoff_png(results, out / "tradeoff.png", metric=RANKING_METRIC)
    except Exception as e:
        logger.warning(f"{out / 'tradeoff.png'} not drawn: {type(e).__name__}: {e}")
    logger.info(f"wrote {out / 'results.json'}, {out / 'samples.jsonl'} and {out / 'tradeoff.png'} ({RANKING_METRIC} "
        "against cost per token)")
    return results


def _load_methods(specs: list[str]) -> list:
    """Every method of the list, or one error naming each that cannot be loaded (before any work starts)."""
    methods, problems = [], []
    for spec in specs:
        try:
            methods.append(load_method(spec))
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
    names = [m.name for m in methods]
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"two methods of --method are named {', '.join(duplicated)}: results are kept by name")
    return methods


class _SettingsLedger:
    """What decided each method's scores in one output folder — a method's optional `settings()`, e.g. the
    amortized estimator's file — kept in run.json under ``method_settings`` from the method's first scored
    sample on, so that a killed run keeps it and a resumed run can check it: scores made under other settings
    would be two methods under one name in results.json."""

    def __init__(self, marker: Path, persist: bool = True):
        self.marker = marker
        self.persist = persist  # one writer of run.json: rank 0 of a distributed run
        self.recorded: dict = json.loads(marker.read_text()).get("method_settings", {})
        self._checked: set[str] = set()

    def merge(self, recorded: dict) -> None:
        """Another rank's first records (a method it alone scored in this run)."""
        new = {name: settings for name, settings in recorded.items() if name not in self.recorded}
        if new:
            self.recorded.update(new)
            self._write()

    def _write(self) -> None:
        if self.persist:
            run = json.loads(self.marker.read_text())
            write_text_atomically(self.marker, json.dumps({**run, "method_settings": self.recorded}, indent=1))

    def check(self, method) -> str | None:
        """After the method scored a sample: records its settings the first time; the reason to stop it when
        they differ from what the folder's earlier scores were made under."""
        if method.name in self._checked or not callable(getattr(method, "settings", None)):
            return None
        self._checked.add(method.name)
        settings = _settings(method)
        previous = self.recorded.get(method.name)
        if previous and settings and previous != settings:
            return (f"{method.name}: this folder's earlier {method.name} scores were made under {previous}, this "
                    f"run's under {settings}; not mixing them (use another --output-dir, or the earlier settings)")
        if settings and not previous:
            self.recorded[method.name] = settings
            self._write()
        return None


def _settings(method) -> dict:
    """A method's `settings()`, or {} with a warning when a plugin's raises or is not JSON: the results are
    written either way."""
    try:
        return json.loads(json.dumps(method.settings()))  # as run.json gives it back (tuples become lists)
    except Exception as e:
        logger.warning(f"method {method.name!r}: settings() failed ({type(e).__name__}: {e}); not recorded")
        return {}


def _save_sample_heatmaps(path: Path, shared: "_Shared", records: list[dict]) -> None:
    """One picture per sample: the ablation truth's row, then each method scored in this folder (from its
    records, so a re-run draws the methods of earlier runs too; its per-span r2 under each panel). The
    reference ``ablation`` is the truth's row already."""
    ctx = shared.ctx
    rows, captions = {"ablation (truth)": shared.effects}, {}
    for record in sorted(records, key=lambda r: r["method"]):
        if "error" in record or record.get("reads_ground_truth"):
            continue
        rows[record["method"]] = np.array(record["scores"], dtype=np.float64)
        captions[record["method"]] = [f"r2 {v:.2f}" if v is not None else "r2 –" for v in record["span_metrics"]["r2"]]
    save_heatmap_png(path, ctx.sample.image, ctx.regions, rows, [s.text for s in ctx.trace.spans],
                     f"{ctx.sample.id}: {ctx.sample.prompt}", captions)


def _claim_output_dir(out: Path, cfg: EvalConfig) -> None:
    """Makes the folder; a resumed run must use the same protocol as what is already in it."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "run.json"
    key = cfg.ground_truth_key()
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("ground_truth_key") != key:
            raise ValueError(f"{out} holds a run made under another configuration ({previous.get('config')}); "
                             "use a new --output-dir to compare configurations")
    else:
        write_text_atomically(marker, json.dumps({"ground_truth_key": key, "config": asdict(cfg)}, indent=1))


@dataclass
class _Shared:
    """One sample as the harness holds it: its context and its ground truth, never handed to a method."""

    ctx: AttributionContext
    effects: np.ndarray  # (n_spans, K) single-region Δ
    masks: np.ndarray  # (n_subsets, K) random region subsets
    subset_effects: np.ndarray  # (n_subsets, n_spans)
    ablation_seconds: float
    region_note: str | None


def _sample_context(model, sample, cfg: EvalConfig, cache_dir: Path) -> _Shared:
    """Trace, regions and ablation ground truth of one sample, from the cache when there."""
    prepared = model.prepare(sample.image, sample.prompt)
    cached_path = cache_dir / f"{sample.id}.npz"
    # None when unreadable too (torn by a kill before writes were atomic): computed again
    cached = load_arrays(cached_path, ("token_ids", "effects", "masks", "subset_effects", "ablation_seconds"))
    if cached is not None:
        trace = model.trace_from_ids(prepared, cached["token_ids"].tolist())
    else:
        trace = model.generate(prepared, max_new_tokens=cfg.max_new_tokens)
    if not trace.spans:
        raise ValueError(f"the model wrote no span to attribute (trace: {trace.text!r})")
    regions, note = make_regions(cfg.regions, model, prepared, k=cfg.k, sample=sample, backbone=cfg.region_backbone)
    ctx = AttributionContext(model, sample, prepared, trace, regions, cfg.ablation, cfg.seed)
    if cached is None:
        truth = ground_truth(model, prepared, trace, regions, cfg.ablation, cfg.n_subsets,
                             subset_seed(cfg.seed, sample.id))
        effects, masks, sub, ablation_seconds = truth.effects, truth.masks, truth.subset_effects, truth.seconds
        save_arrays(cached_path, token_ids=np.array(trace.token_ids), effects=effects, masks=masks,
                    subset_effects=sub, ablation_seconds=ablation_seconds)
    else:
        effects, masks, sub = cached["effects"], cached["masks"], cached["subset_effects"]
        ablation_seconds = float(cached["ablation_seconds"])
    return _Shared(ctx, effects, masks, sub, ablation_seconds, note)


def _method_context(shared: _Shared, method) -> AttributionContext:
    """The method's own copy of the sample: nothing it changes reaches another method or the scoring; the
    ground truth only for a method that declares it reads it (a copy, read-only)."""
    ctx = shared.ctx
    mine = AttributionContext(ctx.model, *copy.deepcopy((ctx.sample, ctx.prepared, ctx.trace, ctx.regions)),
                              ctx.operator, ctx.seed, may_read_ground_truth=reads_ground_truth(method))
    if mine.may_read_ground_truth:
        effects = shared.effects.copy()
        effects.flags.writeable = False
        mine.cache["single_region_effects"] = effects
    return mine


class MethodTimeout(BaseException):
    """A method ran past its time limit. A BaseException, so that a plugin's ``except Exception`` cannot
    swallow it."""


@contextmanager
def _time_limit(seconds: float | None, what: str):
    """Interrupts the block after ``seconds`` with `MethodTimeout` (SIGALRM: the main thread of a Unix process
    only; elsewhere — a server thread — the block runs unbounded). A method stuck inside one long native call
    is interrupted when that call returns."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise MethodTimeout(f"{what} ran past its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_method(method, shared: _Shared, family: str, timeout_s: float | None = None) -> dict:
    ctx = shared.ctx
    name = getattr(method, "name", type(method).__name__)
    base = {"benchmark": family, "sample_id": ctx.sample.id, "method": name, "n_spans": ctx.n_spans,
            "n_tokens": len(ctx.trace.token_ids), "k": ctx.regions.k, "region_note": shared.region_note,
            "reference": is_reference(method), "reads_ground_truth": reads_ground_truth(method)}
    try:
        mine = _method_context(shared, method)
        with _time_limit(timeout_s, name), PeakMemory() as cost:
            raw = method.attribute(mine)
        scores = validate_attribution(raw, ctx.n_spans, ctx.regions.k, name)
    except (Exception, MethodTimeout) as e:  # a plugin may fail any way it likes: record it, keep the others going
        logger.warning(f"{name} failed on {ctx.sample.id}: {type(e).__name__}: {e}")
        return {**base, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}
    # a method that reads the ablation effects costs what computing them cost
    seconds = shared.ablation_seconds if reads_ground_truth(method) else cost.seconds
    scored = score_spans(ctx, scores, shared.effects, shared.masks, shared.subset_effects)
    return {**base, "sec_per_token": seconds / max(1, len(ctx.trace.token_ids)), "peak_mem_mb": cost.peak_mb,
            "span_metrics": {k: [None if not np.isfinite(v) else float(v) for v in vals]
                             for k, vals in scored.values.items()},
            "undefined_spans": np.flatnonzero(scored.method_undefined).tolist(),
            "truth_undefined_spans": np.flatnonzero(scored.truth_undefined).tolist(),
            "span_texts": [s.text for s in ctx.trace.spans],
            "span_is_answer": [s.is_answer for s in ctx.trace.spans],
            "scores": scores.tolist()}
