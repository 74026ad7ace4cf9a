"""The `vattr-bench` command line."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from .benchmarks import SPLITS


def _cmd_list(args) -> int:
    from .benchmarks import FAMILIES
    from .models import BUILTIN, PAPER_MODELS
    from .models.hf import SUPPORTED_MODEL_TYPES

    from .benchmarks.real import REAL_SETS

    print("benchmarks (synthetic twins; the paper's sets they stand in for):")
    for name, module in FAMILIES.items():
        print(f"  {name:<9} {module.DESCRIPTION}  [{', '.join(module.PAPER_SETS)}]")
    from .benchmarks import HARD_VARIANTS

    print("hard variants (--benchmark hard, or by name; vattr-tiny fails on 20–60% of each):")
    for name, variant in HARD_VARIANTS.items():
        print(f"  {name:<14} [hard] {variant.DESCRIPTION}")
    print("real-set loaders (--source real --real-set NAME [--data PATH]):")
    for name, spec in REAL_SETS.items():
        print(f"  {name:<10} {spec.family:<9} {spec.hub_id} ({spec.split})")
    print("models:")
    for name, path in BUILTIN.items():
        state = "shipped" if (path / "config.json").is_file() else "missing: run python -m vattr_bench.models.tiny.train"
        print(f"  {name:<30} built-in ({state})")
    for name, arch in PAPER_MODELS.items():
        print(f"  {name:<30} {arch} (needs local weights)")
    print(f"  any local checkpoint or cached hub id of type: {', '.join(SUPPORTED_MODEL_TYPES)}")
    from .methods import available_methods
    from .regions import OPERATORS, PROTOCOLS

    print("methods:")
    for name, origin in available_methods().items():
        print(f"  {name:<22} {origin}")
    print(f"region protocols: {', '.join(PROTOCOLS)} (default feature-ward)")
    print(f"ablation operators: {', '.join(OPERATORS)} (default knockout)")
    return 0


def _cmd_generate(args) -> int:
    from .benchmarks import resolve_families
    from .generate import format_summary, generate_traces
    from .models import load_model

    resolve_families(args.benchmark)  # fail on a bad name before the model loads
    if args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    from .distributed import Ranks, finish

    _check_output_folder("--output-dir", args.output_dir)
    ranks = Ranks.from_env(args.device)  # one process of a torchrun / accelerate launch, or the only one
    model = load_model(args.model, **_placement(args, ranks))
    summary = generate_traces(model, args.benchmark, args.limit, Path(args.output_dir), split=args.split,
                              seed=args.seed, max_new_tokens=args.max_new_tokens, ranks=ranks)
    if ranks.is_main:
        print(format_summary(summary))
        print(f"wrote {Path(args.output_dir) / 'generations.jsonl'}")
    finish(ranks)
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate import EvalConfig, evaluate
    from .methods import split_method_list

    _check_output_folder("--output-dir", args.output_dir)
    cfg = EvalConfig(model=args.model, methods=split_method_list(args.method),  # not split inside a method's arguments
                     benchmark=args.benchmark, limit=args.limit, output_dir=args.output_dir, regions=args.regions,
                     k=args.k, ablation=args.ablation, seed=args.seed, n_subsets=args.n_subsets, split=args.split,
                     region_backbone=args.region_backbone, save_heatmaps=args.save_heatmaps, source=args.source,
                     real_set=args.real_set, data=args.data, method_timeout_s=args.method_timeout or None,
                     **_placement(args))
    evaluate(cfg)
    return 0


def _cmd_regions(args) -> int:
    from .benchmarks import synthetic_sample
    from .heatmaps import save_regions_png
    from .images import load_image
    from .models import load_model
    from .regions import make_regions
    from .types import Sample

    _check_output_file("--save-png", args.save_png)
    model = load_model(args.model)
    if args.image:
        sample = Sample("user-image", "user", load_image(args.image), args.prompt)
    else:
        sample = synthetic_sample(args.benchmark, args.index, split=args.split, seed=args.seed)
    prepared = model.prepare(sample.image, sample.prompt)
    regions, note = make_regions(args.regions, model, prepared, k=args.k, sample=sample, backbone=args.region_backbone)
    if note:
        print(note)
    sizes = regions.token_matrix.sum(1)
    print(f"{sample.id}: {regions.k} {regions.protocol} regions over {prepared.n_visual_tokens} visual tokens "
          f"(tokens per region {sizes.min()}–{sizes.max()}), params {regions.params}")
    if args.save_png:
        save_regions_png(Path(args.save_png), sample.image, regions)
        print(f"wrote {args.save_png}")
    return 0


def _cmd_train_estimator(args) -> int:
    from .amortized.train import run
    from .benchmarks import resolve_families
    from .models import load_model

    resolve_families(args.benchmark)
    _check_output_file("--output", args.output)
    if args.n_train < 2:
        raise ValueError("--n-train must be at least 2 (one sample is held out)")
    from .distributed import Ranks, finish

    ranks = Ranks.from_env(args.device)  # one process of a torchrun / accelerate launch, or the only one
    model = load_model(args.model, **_placement(args, ranks))
    run(model, args.model, args.benchmark, args.n_train, Path(args.output), regions=args.regions, k=args.k,
        ablation=args.ablation, seed=args.seed, n_subsets=args.n_subsets, region_pool=args.region_pool,
        targets=args.targets, transfer=args.transfer, features=args.features, n_heads=args.heads,
        cache_dir=None if args.cache_dir == "none" else Path(args.cache_dir), sign_weight=args.sign_weight,
        ranks=ranks)
    finish(ranks)
    return 0


def _sign_weight(text: str) -> float | str:
    """--sign-weight: a number, or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number between -1 and 1, or 'auto'; got {text!r}") from None


def _cmd_stream(args) -> int:
    from .images import load_image
    from .methods.amortized import Amortized
    from .models import load_model
    from .regions import make_regions
    from .streaming import stream_attributions

    _check_output_file("--save-png", args.save_png)
    image = load_image(args.image)
    model = load_model(args.model, **_placement(args))
    prepared = model.prepare(image, args.prompt)
    regions, note = make_regions(args.regions, model, prepared, k=args.k)
    if note:
        print(note)
    estimator = Amortized(args.estimator).load_for(model, regions.protocol, args.ablation)
    print(f"{regions.k} {regions.protocol} regions; streaming attributions as the model thinks:")

    def show(event):
        top = np.argsort(-event.scores)[:3]
        label = "answer" if event.is_answer else f"span {event.index}"
        print(f"[{event.emitted_s:6.2f}s] {label}: {event.text!r}  top regions "
              + ", ".join(f"{k}:{event.scores[k]:+.2f}" for k in top), flush=True)

    events = stream_attributions(model, prepared, regions, estimator, max_new_tokens=args.max_new_tokens, on_event=show)
    if args.save_png and events:
        from .heatmaps import save_heatmap_png

        save_heatmap_png(Path(args.save_png), prepared.image, regions, np.stack([e.scores for e in events]),
                         [e.text for e in events], f"{model.name}: {args.prompt}")
        print(f"wrote {args.save_png}")
    return 0


def _cmd_perf(args) -> int:
    from .models import load_model
    from .perf import PerfConfig, run_perf

    lengths = tuple(int(x) for x in args.lengths.split(","))
    if args.per_family < 1 or args.rounds < 1 or len(lengths) < 2 or min(lengths) < 16:
        raise ValueError("--per-family and --rounds must be ≥ 1, --lengths at least two lengths ≥ 16")
    _check_output_file("--output", args.output)
    _check_output_file("--save-png", args.save_png)
    cfg = PerfConfig(benchmark=args.benchmark, per_family=args.per_family, rounds=args.rounds, lengths=lengths,
                     gradient_spans=args.gradient_spans, regions=args.regions, k=args.k, seed=args.seed,
                     estimator=args.estimator, force_reference_traces=args.random_init)
    model = load_model(args.model, **_placement(args), random_init=args.random_init, seed=args.seed)
    if args.random_init and args.estimator is None:  # nothing trained for random weights: TIMING ONLY
        from .models.random_init import random_estimator

        cfg.estimator = random_estimator(model, args.regions, cfg.ablation, seed=args.seed)
    report = run_perf(model, cfg)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1, default=float))
        print(f"wrote {args.output}", file=sys.stderr)
    if args.save_png:
        from .heatmaps import save_perf_png

        save_perf_png(report, Path(args.save_png))
        print(f"wrote {args.save_png}", file=sys.stderr)
    return 0


def _cmd_trajectory(args) -> int:
    from .trajectory import TrajectoryConfig, run_trajectory

    _check_output_folder("--output-dir", args.output_dir)
    run_trajectory(TrajectoryConfig(model=args.model, benchmark=args.benchmark, limit=args.limit,
                                    output_dir=args.output_dir, split=args.split, seed=args.seed, k=args.k,
                                    ablation=args.ablation, estimator=args.estimator, folds=args.folds,
                                    n_bootstrap=args.n_bootstrap))
    return 0


def _is_one_json_document(path: Path) -> bool:
    """Whether the file's first line is not JSON on its own but the whole file is (an indented JSON file)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    try:
        json.loads(first)
        return False
    except ValueError:
        pass
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except ValueError:
        return False


def _run_records(path: Path, metrics=()) -> tuple[list[dict], Path]:
    """An evaluate run's records, from its --output-dir or its samples.jsonl; a UserError naming the file
    for one that is not (or no longer) such records, or whose scored records lack one of ``metrics``."""
    from .errors import UserError
    from .results import read_records

    samples = path / "samples.jsonl" if path.is_dir() else path
    if not samples.is_file():
        raise FileNotFoundError(f"no samples.jsonl at {path} (give an evaluate --output-dir or its samples.jsonl)")
    if _is_one_json_document(samples):  # a results.json, say: named at once, not met as a warning per line
        raise UserError(f"{samples} is not an evaluate run's samples.jsonl: it is one JSON document, not a JSON record "
                        "per line (give the run's --output-dir or its samples.jsonl)")
    records = read_records(samples)  # objects with benchmark/sample_id/method only; not text: an error naming it
    if not records and samples.read_text(encoding="utf-8").strip():
        raise UserError(f"{samples} is not an evaluate run's samples.jsonl: no line of it is a JSON record (give the "
                        "run's --output-dir or its samples.jsonl)")
    for number, record in enumerate(records, 1):
        # a run whose records were edited or cut is named here, not met as a KeyError later
        if "error" in record:
            continue
        span_metrics = record.get("span_metrics")
        missing = ({f"span_metrics.{m}" for m in metrics if m not in span_metrics} if isinstance(span_metrics, dict)
                   else {"span_metrics"})
        if missing:
            raise UserError(f"{samples} is not an evaluate run's samples.jsonl: its record {number} "
                            f"({json.dumps(record)[:60]}) lacks {', '.join(sorted(missing))} (give the run's "
                            "--output-dir or its samples.jsonl)")
    return records, samples


def _ground_truth_key(samples: Path) -> str | None:
    from .errors import read_json

    marker = samples.parent / "run.json"
    run = read_json(marker, "the run's marker") if marker.is_file() else {}
    return run.get("ground_truth_key") if isinstance(run, dict) else None


def _cmd_compare(args) -> int:
    from .results import SPAN_METRICS, paired_differences

    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in SPAN_METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric {', '.join(unknown) or '(none)'}; choose from {', '.join(SPAN_METRICS)}")
    records, samples = _run_records(Path(args.run), metrics)
    if args.by_span_kind:
        records = _split_by_span_kind(records, samples, metrics)
    if not any(r.get("method") == args.method and "error" not in r for r in records):
        found = sorted({r.get("method") for r in records})
        raise ValueError(f"{samples} has no scored sample of {args.method!r}; it has: {', '.join(found) or 'none'}")
    against = "each other method"
    if args.against:
        # another run's methods, renamed by their run, paired on the same samples: only meaningful when both
        # runs share their traces and ground truth (evaluate's ground-truth key: model, regions, ablation, seed…)
        theirs, their_samples = _run_records(Path(args.against), metrics)
        if args.by_span_kind:
            theirs = _split_by_span_kind(theirs, their_samples, metrics)
        mine_key, their_key = _ground_truth_key(samples), _ground_truth_key(their_samples)
        if mine_key is None or mine_key != their_key:
            raise ValueError(f"{args.run} and {args.against} were not run under the same ground-truth configuration "
                             f"(run.json keys {mine_key} and {their_key}): their spans are not the same spans")
        label = Path(args.against).name if Path(args.against).is_dir() else their_samples.parent.name
        drift = _score_drift(records, theirs, args.method)
        records = [r for r in records if r.get("method") == args.method] + \
                  [{**r, "method": f"{r['method']} @ {label}"} for r in theirs]
        against = f"each method of {args.against}"
    rows = paired_differences(records, args.method, metrics, ratio=args.ratio)
    cell = {(r["benchmark"], r["other"], r["metric"]): r for r in rows}
    if args.ratio:
        print(f"{args.method}'s mean ÷ that of {against}, over the spans both scored, [95% interval, samples "
              "resampled]")
    else:
        print(f"{args.method} minus {against}, mean over the spans both scored, [95% interval, samples "
              "resampled] — an interval that holds 0 is not a difference these samples resolve")
    print("| benchmark | other method | " + " | ".join(metrics) + " | samples |")
    print("|---|---|" + "---|" * len(metrics) + "---|")
    for benchmark, other in dict.fromkeys((r["benchmark"], r["other"]) for r in rows):
        parts = []
        for m in metrics:
            r = cell[(benchmark, other, m)]
            ci = r["ci95"]
            form = "{:.2f}×" if args.ratio else "{:+.3f}"
            parts.append("–" if r["value"] is None else form.format(r["value"])
                         + (f" [{form.format(ci[0])}, {form.format(ci[1])}]" if ci else ""))
        print(f"| {benchmark} | {other} | " + " | ".join(parts) + f" | {cell[(benchmark, other, metrics[0])]['n_samples']} |")
    if args.against and drift:
        print(f"{args.method}'s region scores, here against {args.against}: largest difference {drift['largest_difference']:.2g} "
              f"(largest |score| {drift['largest_score']:.3g}) over the {drift['n_samples']} samples both scored")
    return 0


def _split_by_span_kind(records: list[dict], samples: Path, metrics) -> list[dict]:
    """Each scored record as two, "<benchmark> thinking" and "<benchmark> answer", holding the span metrics
    of those spans only (evaluate marks each span in ``span_is_answer``)."""
    from .errors import UserError

    split = []
    for r in records:
        if "error" in r:
            continue
        kinds = r.get("span_is_answer")
        if not isinstance(kinds, list) or len(kinds) != len(r["span_metrics"][metrics[0]]):
            raise UserError(f"{samples}: record of {r.get('method')!r} on {r.get('sample_id')!r} does not mark its "
                            "answer spans (span_is_answer); run evaluate again into a new folder to compare by span kind")
        for kind, answer in (("thinking", False), ("answer", True)):
            keep = [i for i, a in enumerate(kinds) if bool(a) == answer]
            split.append({**r, "benchmark": f"{r['benchmark']} {kind}",
                          "span_metrics": {m: [r["span_metrics"][m][i] for i in keep] for m in metrics}})
    return split


def _score_drift(mine: list[dict], theirs: list[dict], method: str) -> dict | None:
    """How far ``method``'s region scores moved between two runs of the same samples: the largest absolute
    difference and, for scale, the largest |score|; None when no sample was scored by it in both."""
    def scored(records):
        return {(r["benchmark"], r["sample_id"]): np.asarray(r["scores"], dtype=np.float64)
                for r in records if r.get("method") == method and "scores" in r}

    a, b = scored(mine), scored(theirs)
    common = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not common:
        return None
    return {"largest_difference": max(float(np.abs(a[k] - b[k]).max(initial=0.0)) for k in common),
            "largest_score": max(float(np.abs(a[k]).max(initial=0.0)) for k in common), "n_samples": len(common)}


def _cmd_leaderboard(args) -> int:
    from .leaderboard import build_app
    from .models import check_device

    check_device(args.device)  # the demo loads its model at first use: fail on a bad device now
    # --results not given: the default folders, each silently empty when missing (a fresh clone has no runs/)
    app = build_app(args.results, model_name=args.model, device=args.device, submit_dir=args.submit_dir,
                    demo_concurrency=args.demo_concurrency)
    app.launch(server_name=args.host, server_port=args.port, max_file_size="65mb")
    return 0


def _cmd_submit(args) -> int:
    from .submission import check_path, make_bundle

    folder = make_bundle(args.method, args.model, Path(args.output_dir), args.limit, args.device)
    problems = check_path(folder, against=args.against)
    from .methods import parse_method_spec

    plugin_file = parse_method_spec(args.method).file is not None
    print(f"wrote {folder}/results.json, samples.jsonl, report.md" + (" and the plugin file" if plugin_file else ""))
    if problems:
        print(f"the bundle does not pass check-submission ({len(problems)} problems):")
        print("\n".join(f"- {p}" for p in problems))
        return 1
    print("the bundle passes check-submission: upload results.json and samples.jsonl in the leaderboard's Submit tab")
    return 0


def _cmd_check_submission(args) -> int:
    from .submission import check_path

    problems = check_path(Path(args.path), against=args.against)
    if problems:
        print(f"{args.path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:")
        print("\n".join(f"- {p}" for p in problems))
        return 1
    print(f"{args.path}: valid submission")
    return 0


def _cmd_make_random_model(args) -> int:
    from .models.random_init import save_random_model

    written = save_random_model(Path(args.output), args.arch, weights=args.with_weights, hidden_size=args.hidden_size,
                                num_layers=args.num_layers, num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                                intermediate_size=args.intermediate_size, patch_size=args.patch_size, seed=args.seed)
    print(f"wrote {args.arch} with a {written['decoder_parameters'] / 1e6:.1f} M-parameter decoder to {written['path']} "
          f"({'with' if args.with_weights else 'without'} weights); time it with `vattr-bench perf --model "
          f"{written['path']} --random-init`")
    return 0


def _cmd_lm_eval_tasks(args) -> int:
    from .lm_eval_tasks import TASKS_DIR

    print(TASKS_DIR)
    return 0


def _cmd_train_model(args) -> int:
    from .models.tiny import train

    return train.main(args.train_args) or 0


# Flags several commands share, declared once: the same name, default, choices and help everywhere.
MODEL_HELP = "vattr-tiny, a checkpoint folder or a cached hub id"
ESTIMATOR_HELP = ("the amortized estimator's JSON (default: $VATTR_ESTIMATOR when set, else the one shipped for the "
                  "model)")


def _add_model(parser, help: str = MODEL_HELP) -> None:
    parser.add_argument("--model", default="vattr-tiny", help=help)


def _add_benchmark(parser, default: str = "all", help: str = "'all', 'hard' or a comma list of families") -> None:
    parser.add_argument("--benchmark", default=default, help=help)


def _add_split(parser) -> None:
    parser.add_argument("--split", default="test", choices=SPLITS)


def _add_regions(parser, protocol: bool = True, backbone: bool = False,
                 k_help: str = "number of regions (16–128, clamped to the visual tokens)") -> None:
    """--regions (a protocol of regions.PROTOCOLS), --k, and where the protocol takes one, --region-backbone."""
    from .regions import PROTOCOLS

    if protocol:
        parser.add_argument("--regions", default="feature-ward", choices=PROTOCOLS,
                            help="region protocol (default feature-ward)")
    parser.add_argument("--k", type=int, default=16, help=k_help)
    if backbone:
        parser.add_argument("--region-backbone", default=None,
                            help="DINO path/id for feature-ward (default: the model's own features)")


def _add_ablation(parser, help: str = "ablation operator (default knockout)") -> None:
    from .regions import OPERATORS

    parser.add_argument("--ablation", default="knockout", choices=OPERATORS, help=help)


def _add_estimator(parser, help: str = ESTIMATOR_HELP) -> None:
    parser.add_argument("--estimator", default=None, help=help)


def _add_device(parser) -> None:
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, … (on an "
                        "accelerator the amortized worker's per-span work runs there too)")
    parser.add_argument("--dtype", default=None, help="the model's weights: float32, bfloat16 or float16 (default: "
                        "the checkpoint's own)")
    parser.add_argument("--device-map", default=None, type=_device_map,
                        help="place a model bigger than one device with accelerate instead of --device: auto, balanced, "
                             "balanced_low_0, sequential (over the visible GPUs, then the CPU, then --offload-folder), "
                             "or a JSON object / .json file of module name → device (docs/multi-gpu.md)")
    parser.add_argument("--max-memory", default=None, help="with --device-map: the most each device may hold, "
                        "e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    parser.add_argument("--offload-folder", default=None, help="with --device-map: where weights that fit on no "
                        "device are kept on disk")


def _device_map(text: str):
    """--device-map: a strategy name, a JSON object, or a .json file holding one."""
    if text.lstrip().startswith("{"):
        return json.loads(text)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"no device map file {text}")
        return json.loads(Path(text).read_text())
    return text


def _placement(args, ranks=None) -> dict:
    """load_model's keyword arguments for where the model runs, from the flags `_add_device` adds; under a
    distributed launch (``ranks``) each rank takes its own accelerator."""
    from .models import parse_max_memory

    if args.device_map is None and (args.max_memory or args.offload_folder):
        raise ValueError("--max-memory and --offload-folder go with --device-map")
    return {"device": ranks.device(args.device) if ranks else args.device, "dtype": args.dtype,
            "device_map": args.device_map,
            "max_memory": parse_max_memory(args.max_memory), "offload_folder": args.offload_folder}


def _check_output_folder(flag: str, path) -> None:
    """Fail before any work on an output folder that cannot be made or written into: a file, below a file,
    or read-only (judged on the nearest part of the path that exists; nothing is created here)."""
    from .errors import UserError

    path = Path(path)
    existing = _nearest_existing(path)
    if existing == path and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {existing} (permission denied or read-only)")


def _check_output_file(flag: str, path) -> None:
    """Fail before any work on an output file that cannot be written: a folder, below a file, read-only."""
    from .errors import UserError

    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write it (permission denied or read-only)")
    if not path.exists():
        _check_output_folder(flag, path.parent)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vattr-bench", description="Benchmark visual attribution for thinking VLMs.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="benchmarks and models").set_defaults(func=_cmd_list)

    g = sub.add_parser("generate", help="run a model over benchmark samples and score its answers")
    _add_model(g)
    _add_benchmark(g)
    g.add_argument("--limit", type=int, default=20, help="samples per benchmark")
    g.add_argument("--output-dir", default="runs/generate")
    _add_split(g)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=256)
    _add_device(g)
    g.set_defaults(func=_cmd_generate)

    e = sub.add_parser("evaluate", help="score attribution methods against ablation on benchmark samples")
    e.add_argument("--method", required=True,
                   help="comma list: built-in names, plugin entry points, path/file.py:Class; a method's arguments "
                        "follow it after ':' as key=value pairs, e.g. attention,amortized:estimator=E.json,random")
    _add_model(e)
    _add_benchmark(e)
    e.add_argument("--limit", type=int, default=20, help="samples per benchmark")
    e.add_argument("--output-dir", default="runs/evaluate")
    e.add_argument("--source", default="synthetic", choices=["synthetic", "real"])
    e.add_argument("--real-set", default=None, help="with --source real: MathVista, ScienceQA, AI2D, DocVQA, WebSight, RefCOCO")
    e.add_argument("--data", default=None, help="with --source real: a local folder or parquet/json file in the set's schema")
    _add_regions(e, backbone=True)
    _add_ablation(e)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--n-subsets", type=int, default=32, help="random region subsets for LDS")
    _add_split(e)
    e.add_argument("--save-heatmaps", action="store_true",
                   help="one PNG per sample: the ablation truth and each method, a panel per span")
    e.add_argument("--method-timeout", type=float, default=600.0,
                   help="seconds a method may take on one sample before it is stopped and recorded as failed "
                        "there (0: no limit)")
    _add_device(e)
    e.set_defaults(func=_cmd_evaluate)

    c = sub.add_parser("compare", help="one method against the others of an evaluate run: paired differences "
                       "with 95%% intervals")
    c.add_argument("run", help="an evaluate --output-dir (or its samples.jsonl)")
    c.add_argument("--method", default="amortized")
    c.add_argument("--metric", default="r2,lds", help="comma list of span metrics")
    c.add_argument("--against", default=None,
                   help="another evaluate run on the same samples and ground truth (say the same method with another "
                        "estimator): its methods, named 'method @ run', instead of this run's others")
    c.add_argument("--by-span-kind", action="store_true",
                   help="each benchmark's thinking spans and its answer span as separate rows")
    c.add_argument("--ratio", action="store_true",
                   help="the method's mean ÷ the other's instead of the difference (for metrics ≥ 0, such as r2)")
    c.set_defaults(func=_cmd_compare)

    r = sub.add_parser("regions", help="compute (and draw) the regions of a sample or an image")
    _add_model(r)
    _add_benchmark(r, default="general", help="the family of the benchmark sample")
    r.add_argument("--index", type=int, default=0)
    _add_split(r)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--image", default=None, help="an image file instead of a benchmark sample")
    r.add_argument("--prompt", default="describe the image .")
    _add_regions(r, backbone=True)
    r.add_argument("--save-png", default=None)
    r.set_defaults(func=_cmd_regions)

    te = sub.add_parser("train-estimator", help="train the amortized attributor's linear estimator for a model")
    _add_model(te)
    _add_benchmark(te)
    te.add_argument("--n-train", type=int, default=200, help="samples (split 'estimator'), 20%% of them held out")
    te.add_argument("--output", required=True)
    _add_regions(te)
    _add_ablation(te)
    te.add_argument("--n-subsets", type=int, default=32)
    te.add_argument("--region-pool", default="sum", choices=["sum", "mean"])
    te.add_argument("--features", default="direct-logit-signed",
                    choices=["direct-logit-signed", "direct-logit", "logit-weighted", "value-weighted", "attention"],
                    help="direct-logit-signed (default): per token x = Σ over the region of attention × u_yᵀW_O^h v_n / rms, "
                         "what each head's read of the region adds to the predicted token's logit, final norm "
                         "included, read as |x| + β·x (--sign-weight β), so that a read raising the logit counts "
                         "more than one lowering it; direct-logit: |x|; logit-weighted: |x| without the final norm's "
                         "1/rms; value-weighted: attention × ‖W_O^h v_n‖; attention: plain pooled attention")
    te.add_argument("--sign-weight", type=_sign_weight, default=None,
                    help="β of direct-logit-signed features, between -1 and 1, or 'auto' (default): the one of 0, "
                         "0.25, 0.5, 0.75, 1 that fits best inside the training samples (the shipped vattr-tiny "
                         "estimator's 0.25 was chosen by hand, weighing transfer too: docs/estimator.md)")
    te.add_argument("--targets", default="both", choices=["subsets", "singles", "both"],
                    help="ablation effects the Pearson loss fits: random region subsets, single regions, or both")
    te.add_argument("--transfer", action="store_true",
                    help="also report cross-family transfer (train on the other families, test on each)")
    te.add_argument("--heads", type=int, default=None,
                    help="use only this many heads, chosen on the training samples: streaming computes those "
                         "alone, so each span costs less (default: all L·H)")
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--cache-dir", default="runs/estimator-examples",
                    help="where each sample's features and ablation effects are kept once collected, so that a "
                         "killed run or another fit of the same samples collects only what is missing ('none': "
                         "keep nothing; keyed by model name: use another folder after retraining a model)")
    _add_device(te)
    te.set_defaults(func=_cmd_train_estimator)

    st = sub.add_parser("stream", help="generate on your image and stream per-span attributions (amortized)")
    _add_model(st)
    st.add_argument("--image", required=True)
    st.add_argument("--prompt", required=True)
    _add_regions(st)
    _add_ablation(st, help="the operator the estimator was trained under")
    _add_estimator(st)
    st.add_argument("--max-new-tokens", type=int, default=256)
    st.add_argument("--save-png", default=None, help="also draw every span's region scores over the image here")
    _add_device(st)
    st.set_defaults(func=_cmd_stream)

    pf = sub.add_parser("perf", help="benchmark streaming attribution: overhead, lag, cost per span and per token")
    _add_model(pf)
    _add_benchmark(pf)
    pf.add_argument("--per-family", type=int, default=2, help="samples per benchmark")
    pf.add_argument("--rounds", type=int, default=5,
                    help="interleaved generation rounds for the overhead; its 95%% interval narrows with more "
                         "(~10 points wide at 9 rounds, ~5 at 36 on a 2-core VM)")
    pf.add_argument("--lengths", default="256,1024,4096", help="trace lengths for the per-token cost")
    pf.add_argument("--gradient-spans", type=int, default=3, help="spans timed per gradient baseline per length")
    _add_regions(pf)
    pf.add_argument("--seed", type=int, default=0)
    _add_estimator(pf, help=ESTIMATOR_HELP + ", e.g. vattr_bench/amortized/vattr-tiny.16-heads.estimator.json to time the 16-head one")
    pf.add_argument("--output", default=None, help="also write the full report as JSON here")
    pf.add_argument("--save-png", default=None, help="also draw the cost per span and per token here")
    pf.add_argument("--random-init", action="store_true",
                    help="build --model's architecture from its config.json with random weights (seeded by --seed; "
                         "e.g. a folder from make-random-model) and make it write each sample's reference trace; "
                         "without --estimator the estimator is random too: costs only, nothing faithful")
    _add_device(pf)
    pf.set_defaults(func=_cmd_perf)

    tj = sub.add_parser("trajectory", help="grounding trajectory: predict a wrong answer from the attributions of "
                        "the first 10%%, 20%%, … of the trace (AUC per fraction, amortized and ablation)")
    _add_model(tj)
    _add_benchmark(tj, default="hard", help="'hard' (default: the five hard variants), 'all' or a comma list of "
                   "families")
    tj.add_argument("--limit", type=int, default=30, help="samples per benchmark")
    tj.add_argument("--output-dir", default="runs/trajectory")
    _add_split(tj)
    tj.add_argument("--seed", type=int, default=0, help="the samples' seed, and that of the folds and the bootstrap")
    _add_regions(tj, protocol=False, k_help="number of feature-ward regions")
    _add_ablation(tj, help="the ground truth's operator (and the estimator's)")
    _add_estimator(tj)
    tj.add_argument("--folds", type=int, default=5, help="stratified folds of the logistic regression")
    tj.add_argument("--n-bootstrap", type=int, default=1000, help="resamples for the AUC's 95%% interval")
    tj.set_defaults(func=_cmd_trajectory)

    lb = sub.add_parser("leaderboard", help="Gradio leaderboard over results.json files, with a live streaming demo")
    lb.add_argument("--results", nargs="+", default=None,
                    help="results.json files or folders searched for them (default: leaderboard/results and runs, "
                         "each skipped when missing)")
    lb.add_argument("--submit-dir", default=None, help="where the Submit tab stores submissions, a folder per "
                    "submission (default: the first results folder's 'submitted' subfolder)")
    lb.add_argument("--demo-concurrency", type=int, default=8, help="live demo streams served at once (one model "
                    "instance shared; more wait in the queue)")
    _add_model(lb, help="model of the live demo (needs a trained estimator)")
    lb.add_argument("--host", default="127.0.0.1")
    lb.add_argument("--port", type=int, default=7860)
    lb.add_argument("--device", default="cpu", help="where the live demo's model runs: cpu, cuda, …")
    lb.set_defaults(func=_cmd_leaderboard)

    sb = sub.add_parser("submit", help="run a method under the standard protocol and write the bundle the "
                        "leaderboard's Submit tab accepts (results.json, samples.jsonl, plugin file, report.md)")
    sb.add_argument("--method", required=True, help="path/file.py:Class or an installed entry-point name, "
                    "optionally with arguments after ':' (path/file.py:Class:key=value,…)")
    _add_model(sb)
    sb.add_argument("--output-dir", default="runs/submission")
    sb.add_argument("--limit", type=int, default=50, help="samples per benchmark (the standard is 50)")
    sb.add_argument("--against", nargs="*", default=["leaderboard/results"],
                    help="results folders to look for a duplicate in")
    _add_device(sb)
    sb.set_defaults(func=_cmd_submit)

    cs = sub.add_parser("check-submission", help="validate a results.json (+ samples.jsonl) for the leaderboard: "
                        "exit 0 when valid, 1 with every problem listed")
    cs.add_argument("path", help="a results.json, or a folder holding results.json and optionally samples.jsonl")
    cs.add_argument("--against", nargs="*", default=["leaderboard/results"],
                    help="results folders to look for a duplicate in")
    cs.set_defaults(func=_cmd_check_submission)

    rm = sub.add_parser("make-random-model", help="save a random-weight model of a supported architecture at a "
                        "chosen size (config, tokenizer, processor), for `perf --random-init`")
    rm.add_argument("--arch", required=True, help="qwen2_5_vl, qwen3_vl or glm4v")
    rm.add_argument("--hidden-size", type=int, default=1024)
    rm.add_argument("--num-layers", type=int, default=12)
    rm.add_argument("--num-heads", type=int, default=16)
    rm.add_argument("--num-kv-heads", type=int, default=None, help="grouped-query key/value heads (default: --num-heads)")
    rm.add_argument("--intermediate-size", type=int, default=None, help="MLP width (default: 3 × hidden)")
    rm.add_argument("--patch-size", type=int, default=4, help="vision patch size in pixels (4: an 8×8 grid of "
                    "visual tokens on the 64×64 benchmark images, as vattr-tiny has)")
    rm.add_argument("--seed", type=int, default=0)
    rm.add_argument("--with-weights", action="store_true", help="also save the random weights (default: config only; "
                    "`perf --random-init` draws them)")
    rm.add_argument("--output", required=True, help="folder to write")
    rm.set_defaults(func=_cmd_make_random_model)

    lt = sub.add_parser("lm-eval-tasks", help="print the folder of the lm-evaluation-harness task YAMLs "
                        "(for lm_eval --include_path; docs/lm-eval.md)")
    lt.set_defaults(func=_cmd_lm_eval_tasks)

    t = sub.add_parser("train-model", help="train the embedded vattr-tiny (arguments go to the training script)")
    t.add_argument("train_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=_cmd_train_model)
    return p


def _accept_debug_anywhere(parser: argparse.ArgumentParser) -> None:
    """--debug before the command, or after it among the command's own flags."""
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands:
        for command in action.choices.values():
            if not any("--debug" in a.option_strings for a in command._actions):
                command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="show the full traceback of an error")


class _ConsoleHandler(logging.Handler):
    """The command line's view of the package's logs (`logging.getLogger("vattr_bench")`): information as
    plain lines on stdout (tables, what was written), warnings as ``warning: …`` on stderr beside the
    progress bars. The streams are looked up per message, so a redirected sys.stdout gets them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                print(f"warning: {self.format(record)}", file=sys.stderr, flush=True)
            else:
                print(self.format(record), flush=True)
        except BrokenPipeError:
            raise
        except Exception:
            self.handleError(record)


def _show_logs() -> None:
    """The package's information and warnings on the console, once per process however often main runs."""
    logger = logging.getLogger("vattr_bench")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.INFO)


def main(argv=None) -> int:
    from .errors import describe

    _show_logs()
    parser = build_parser()
    _accept_debug_anywhere(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "train-model" in argv:  # everything after it is the training script's, as typed (argparse's REMAINDER
        at = argv.index("train-model")  # refuses a first argument that starts with "--")
        args = parser.parse_args(argv[:at + 1])
        args.train_args = argv[at + 1:]
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`vattr-bench list | head`): nothing wrong, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit does not fail too
        return 0
    except Exception as e:
        message = describe(e)  # None: not a user error but a bug, raised with its traceback
        if message is None or args.debug:
            raise
        print(f"vattr-bench {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
