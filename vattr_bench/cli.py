"""The `vattr-bench` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_list(args) -> int:
    from .benchmarks import FAMILIES
    from .models import BUILTIN, PAPER_MODELS
    from .models.hf import SUPPORTED_MODEL_TYPES

    print("benchmarks (synthetic twins; real sets they stand in for):")
    for name, module in FAMILIES.items():
        print(f"  {name:<9} {module.DESCRIPTION}  [{', '.join(module.REAL_SETS)}]")
    print("models:")
    for name, path in BUILTIN.items():
        state = "shipped" if (path / "config.json").is_file() else "missing: run python -m vattr_bench.models.tiny.train"
        print(f"  {name:<30} built-in ({state})")
    for name, arch in PAPER_MODELS.items():
        print(f"  {name:<30} {arch} (needs local weights)")
    print(f"  any local checkpoint or cached hub id of type: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return 0


def _cmd_generate(args) -> int:
    from .generate import format_summary, generate_traces
    from .models import load_model

    model = load_model(args.model, device=args.device)
    summary = generate_traces(model, args.benchmark, args.limit, Path(args.output_dir), split=args.split,
                              seed=args.seed, max_new_tokens=args.max_new_tokens)
    print(format_summary(summary))
    print(f"wrote {Path(args.output_dir) / 'generations.jsonl'}")
    return 0


def _cmd_train_model(args) -> int:
    from .models.tiny import train

    return train.main(args.train_args) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vattr-bench", description="Benchmark visual attribution for thinking VLMs.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="benchmarks and models").set_defaults(func=_cmd_list)

    g = sub.add_parser("generate", help="run a model over benchmark samples and score its answers")
    g.add_argument("--model", default="vattr-tiny", help="vattr-tiny, a checkpoint folder or a cached hub id")
    g.add_argument("--benchmark", default="all", help="'all' or a comma list of families")
    g.add_argument("--limit", type=int, default=20, help="samples per benchmark")
    g.add_argument("--output-dir", default="runs/generate")
    g.add_argument("--split", default="test", choices=["train", "val", "estimator", "test"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=_cmd_generate)

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
