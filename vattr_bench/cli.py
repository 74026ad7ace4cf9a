"""The `vattr-bench` command line."""
from __future__ import annotations

import argparse
import json
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
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    summary = generate_traces(model, args.benchmark, args.limit, Path(args.output_dir), split=args.split,
                              seed=args.seed, max_new_tokens=args.max_new_tokens)
    print(format_summary(summary))
    print(f"wrote {Path(args.output_dir) / 'generations.jsonl'}")
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate import EvalConfig, evaluate

    cfg = EvalConfig(model=args.model, methods=[m for m in args.method.split(",") if m.strip()],
                     benchmark=args.benchmark, limit=args.limit, output_dir=args.output_dir, regions=args.regions,
                     k=args.k, ablation=args.ablation, seed=args.seed, n_subsets=args.n_subsets, split=args.split,
                     region_backbone=args.region_backbone, save_heatmaps=args.save_heatmaps, source=args.source,
                     real_set=args.real_set, data=args.data, device=args.device, dtype=args.dtype)
    evaluate(cfg)
    return 0


def _cmd_regions(args) -> int:
    from .benchmarks import synthetic_sample
    from .heatmaps import save_regions_png
    from .images import load_image
    from .models import load_model
    from .regions import make_regions
    from .types import Sample

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
    if args.n_train < 2:
        raise ValueError("--n-train must be at least 2 (one sample is held out)")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    run(model, args.model, args.benchmark, args.n_train, Path(args.output), regions=args.regions, k=args.k,
        ablation=args.ablation, seed=args.seed, n_subsets=args.n_subsets, region_pool=args.region_pool,
        targets=args.targets, transfer=args.transfer, features=args.features, n_heads=args.heads,
        cache_dir=None if args.cache_dir == "none" else Path(args.cache_dir), sign_weight=args.sign_weight)
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

    image = load_image(args.image)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
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
    cfg = PerfConfig(benchmark=args.benchmark, per_family=args.per_family, rounds=args.rounds, lengths=lengths,
                     gradient_spans=args.gradient_spans, regions=args.regions, k=args.k, seed=args.seed,
                     estimator=args.estimator)
    report = run_perf(load_model(args.model, device=args.device, dtype=args.dtype), cfg)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1, default=float))
        print(f"wrote {args.output}", file=sys.stderr)
    if args.save_png:
        from .heatmaps import save_perf_png

        save_perf_png(report, Path(args.save_png))
        print(f"wrote {args.save_png}", file=sys.stderr)
    return 0


def _run_records(path: Path) -> tuple[list[dict], Path]:
    """An evaluate run's records, from its --output-dir or its samples.jsonl."""
    from .results import read_records

    samples = path / "samples.jsonl" if path.is_dir() else path
    if not samples.is_file():
        raise FileNotFoundError(f"no samples.jsonl at {path} (give an evaluate --output-dir or its samples.jsonl)")
    return read_records(samples), samples


def _ground_truth_key(samples: Path) -> str | None:
    marker = samples.parent / "run.json"
    return json.loads(marker.read_text()).get("ground_truth_key") if marker.is_file() else None


def _cmd_compare(args) -> int:
    from .results import SPAN_METRICS, paired_differences

    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in SPAN_METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric {', '.join(unknown) or '(none)'}; choose from {', '.join(SPAN_METRICS)}")
    records, samples = _run_records(Path(args.run))
    if not any(r.get("method") == args.method and "error" not in r for r in records):
        found = sorted({r.get("method") for r in records})
        raise ValueError(f"{samples} has no scored sample of {args.method!r}; it has: {', '.join(found) or 'none'}")
    against = "each other method"
    if args.against:
        # another run's methods, renamed by their run, paired on the same samples: only meaningful when both
        # runs share their traces and ground truth (evaluate's ground-truth key: model, regions, ablation, seed…)
        theirs, their_samples = _run_records(Path(args.against))
        mine_key, their_key = _ground_truth_key(samples), _ground_truth_key(their_samples)
        if mine_key is None or mine_key != their_key:
            raise ValueError(f"{args.run} and {args.against} were not run under the same ground-truth configuration "
                             f"(run.json keys {mine_key} and {their_key}): their spans are not the same spans")
        label = Path(args.against).name if Path(args.against).is_dir() else their_samples.parent.name
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
    return 0


def _cmd_leaderboard(args) -> int:
    from .leaderboard import build_app
    from .models import check_device

    check_device(args.device)  # the demo loads its model at first use: fail on a bad device now
    build_app(args.results, model_name=args.model, device=args.device).launch(server_name=args.host, server_port=args.port)
    return 0


def _cmd_train_model(args) -> int:
    from .models.tiny import train

    return train.main(args.train_args) or 0


def _add_device(parser) -> None:
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, … (on an "
                        "accelerator the amortized worker's per-span work runs there too)")
    parser.add_argument("--dtype", default=None, help="the model's weights: float32, bfloat16 or float16 (default: "
                        "the checkpoint's own)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vattr-bench", description="Benchmark visual attribution for thinking VLMs.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="benchmarks and models").set_defaults(func=_cmd_list)

    g = sub.add_parser("generate", help="run a model over benchmark samples and score its answers")
    g.add_argument("--model", default="vattr-tiny", help="vattr-tiny, a checkpoint folder or a cached hub id")
    g.add_argument("--benchmark", default="all", help="'all' or a comma list of families")
    g.add_argument("--limit", type=int, default=20, help="samples per benchmark")
    g.add_argument("--output-dir", default="runs/generate")
    g.add_argument("--split", default="test", choices=SPLITS)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=256)
    _add_device(g)
    g.set_defaults(func=_cmd_generate)

    e = sub.add_parser("evaluate", help="score attribution methods against ablation on benchmark samples")
    e.add_argument("--method", required=True, help="comma list: built-in names, plugin entry points, path/file.py:Class")
    e.add_argument("--model", default="vattr-tiny")
    e.add_argument("--benchmark", default="all")
    e.add_argument("--limit", type=int, default=20, help="samples per benchmark")
    e.add_argument("--output-dir", default="runs/evaluate")
    e.add_argument("--source", default="synthetic", choices=["synthetic", "real"])
    e.add_argument("--real-set", default=None, help="with --source real: MathVista, ScienceQA, AI2D, DocVQA, WebSight, RefCOCO")
    e.add_argument("--data", default=None, help="with --source real: a local folder or parquet/json file in the set's schema")
    e.add_argument("--regions", default="feature-ward", help="feature-ward | grid | superpixel | gt-boxes")
    e.add_argument("--k", type=int, default=16, help="number of regions (16–128, clamped to the visual tokens)")
    e.add_argument("--region-backbone", default=None, help="DINO path/id for feature-ward (default: the model's own features)")
    e.add_argument("--ablation", default="knockout", help="knockout | mean-fill | blur")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--n-subsets", type=int, default=32, help="random region subsets for LDS")
    e.add_argument("--split", default="test", choices=SPLITS)
    e.add_argument("--save-heatmaps", action="store_true",
                   help="one PNG per sample: the ablation truth and each method, a panel per span")
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
    c.add_argument("--ratio", action="store_true",
                   help="the method's mean ÷ the other's instead of the difference (for metrics ≥ 0, such as r2)")
    c.set_defaults(func=_cmd_compare)

    r = sub.add_parser("regions", help="compute (and draw) the regions of a sample or an image")
    r.add_argument("--model", default="vattr-tiny")
    r.add_argument("--benchmark", default="general")
    r.add_argument("--index", type=int, default=0)
    r.add_argument("--split", default="test", choices=SPLITS)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--image", default=None, help="an image file instead of a benchmark sample")
    r.add_argument("--prompt", default="describe the image .")
    r.add_argument("--regions", default="feature-ward")
    r.add_argument("--k", type=int, default=16)
    r.add_argument("--region-backbone", default=None)
    r.add_argument("--save-png", default=None)
    r.set_defaults(func=_cmd_regions)

    te = sub.add_parser("train-estimator", help="train the amortized attributor's linear estimator for a model")
    te.add_argument("--model", default="vattr-tiny")
    te.add_argument("--benchmark", default="all")
    te.add_argument("--n-train", type=int, default=200, help="samples (split 'estimator'), 20%% of them held out")
    te.add_argument("--output", required=True)
    te.add_argument("--regions", default="feature-ward")
    te.add_argument("--k", type=int, default=16)
    te.add_argument("--ablation", default="knockout")
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
    st.add_argument("--model", default="vattr-tiny")
    st.add_argument("--image", required=True)
    st.add_argument("--prompt", required=True)
    st.add_argument("--regions", default="feature-ward")
    st.add_argument("--k", type=int, default=16)
    st.add_argument("--ablation", default="knockout", help="the operator the estimator was trained under")
    st.add_argument("--estimator", default=None, help="estimator JSON (default: shipped one / $VATTR_ESTIMATOR)")
    st.add_argument("--max-new-tokens", type=int, default=256)
    st.add_argument("--save-png", default=None, help="also draw every span's region scores over the image here")
    _add_device(st)
    st.set_defaults(func=_cmd_stream)

    pf = sub.add_parser("perf", help="benchmark streaming attribution: overhead, lag, cost per span and per token")
    pf.add_argument("--model", default="vattr-tiny")
    pf.add_argument("--benchmark", default="all")
    pf.add_argument("--per-family", type=int, default=2, help="samples per benchmark")
    pf.add_argument("--rounds", type=int, default=5,
                    help="interleaved generation rounds for the overhead; its 95%% interval narrows with more "
                         "(~10 points wide at 9 rounds, ~5 at 36 on a 2-core VM)")
    pf.add_argument("--lengths", default="256,1024,4096", help="trace lengths for the per-token cost")
    pf.add_argument("--gradient-spans", type=int, default=3, help="spans timed per gradient baseline per length")
    pf.add_argument("--regions", default="feature-ward")
    pf.add_argument("--k", type=int, default=16)
    pf.add_argument("--seed", type=int, default=0)
    pf.add_argument("--estimator", default=None, help="estimator JSON (default: shipped one / $VATTR_ESTIMATOR), "
                    "e.g. the shipped value-weighted one to time the cheaper features")
    pf.add_argument("--output", default=None, help="also write the full report as JSON here")
    pf.add_argument("--save-png", default=None, help="also draw the cost per span and per token here")
    _add_device(pf)
    pf.set_defaults(func=_cmd_perf)

    lb = sub.add_parser("leaderboard", help="Gradio leaderboard over results.json files, with a live streaming demo")
    lb.add_argument("--results", nargs="+", default=["leaderboard/results", "runs"],
                    help="results.json files or folders searched for them")
    lb.add_argument("--model", default="vattr-tiny", help="model of the live demo (needs a trained estimator)")
    lb.add_argument("--host", default="127.0.0.1")
    lb.add_argument("--port", type=int, default=7860)
    lb.add_argument("--device", default="cpu", help="where the live demo's model runs: cpu, cuda, …")
    lb.set_defaults(func=_cmd_leaderboard)

    t = sub.add_parser("train-model", help="train the embedded vattr-tiny (arguments go to the training script)")
    t.add_argument("train_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=_cmd_train_model)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"vattr-bench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
