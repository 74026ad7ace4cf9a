"""The markdown tables of docs/results.md, printed from an evaluate run's results.json (nothing typed by hand).

    python experiments/results_tables.py leaderboard/results/vattr-tiny-synthetic-test50.json

Prints: the ranked table (ranking metric per benchmark, its mean, cost), the size-controlled table, the LDS table
with the uniform floor, and the run's configuration line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vattr_bench.metrics import RANKING_METRIC


def _cell(value, digits=2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(results: dict, metrics: tuple[str, ...], title: str) -> str:
    benchmarks = sorted(results["results"])
    methods = sorted({m for b in benchmarks for m in results["results"][b]})
    entry = {(b, m): results["results"][b].get(m) for b in benchmarks for m in methods}

    def mean(method, metric):
        values = [entry[b, method][metric] for b in benchmarks if entry[b, method] and entry[b, method].get(metric)
                  is not None]
        return sum(values) / len(values) if len(values) == len(benchmarks) else None

    def reference(method):
        return any(entry[b, method] and entry[b, method].get("reference") for b in benchmarks)

    ranked = sorted((m for m in methods if not reference(m)), key=lambda m: -(mean(m, metrics[0]) or -9))
    refs = sorted((m for m in methods if reference(m)), key=lambda m: -(mean(m, metrics[0]) or -9))
    head = " / ".join(metrics)
    lines = [f"**{title}** ({head} per benchmark; * a reference, not ranked)", "",
             "| method | " + " | ".join(benchmarks) + f" | mean {metrics[0]} | ms / token |",
             "|---|" + "---|" * (len(benchmarks) + 2)]
    for method in ranked + refs:
        cells = [" / ".join(_cell((entry[b, method] or {}).get(m)) for m in metrics) for b in benchmarks]
        ms = [entry[b, method]["sec_per_token"] for b in benchmarks if entry[b, method]]
        cost = f"{1000 * sum(ms) / len(ms):.3g}" if ms else "–"
        name = f"`{method}`" + (" *" if reference(method) else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(mean(method, metrics[0]), 3)} | {cost} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    args = p.parse_args()
    results = json.loads(args.results.read_text())
    config = results["config"]
    n = {b: max(v["n_samples"] for v in m.values()) for b, m in results["results"].items()}
    print(f"{results['model']}, split {config['split']}, {config['regions']} K {config['k']}, {config['ablation']}, "
          f"{config['n_subsets']} subsets, seed {config['seed']}; samples per benchmark {n}; schema "
          f"{results['schema_version']}, git {results.get('git_hash')}\n")
    print(table(results, (RANKING_METRIC, "r2"), "Faithfulness, ranked by r2_signed") + "\n")
    print(table(results, ("r2_partial_size",), "With region size controlled for") + "\n")
    print(table(results, ("lds",), "LDS (uniform is the floor)") + "\n")
    failed = {(b, m): v for b, ms in results["results"].items() for m, v in ms.items() if v.get("flags")}
    for (b, m), v in sorted(failed.items()):
        print(f"- {b} / {m}: " + "; ".join(v["flags"]))


if __name__ == "__main__":
    main()
