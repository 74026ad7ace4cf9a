"""The About tab's text, built from the code's own lists (benchmark families, the metric registry), so it
cannot drift from what is measured."""
from __future__ import annotations

from ..metrics.registry import METRICS, RANKING_METRIC
from .table import DEFAULT_PROTOCOL, PROTOCOL_DEFAULTS

BIBTEX = """@software{vattr_bench,
  title  = {vattr-bench: benchmarking visual attribution for multimodal thinking models},
  year   = {2026},
  note   = {faithfulness against exhaustive region ablation, and cost per token}
}

@article{realtime_visual_attribution_2026,
  title   = {Real-Time Visual Attribution Streaming in Thinking Models},
  journal = {arXiv preprint arXiv:2604.16587},
  year    = {2026},
  eprint  = {2604.16587},
  archivePrefix = {arXiv}
}"""


def _range_text(metric) -> str:
    lo, hi = metric.range
    return f"[{'−∞' if lo is None else f'{lo:g}'}, {'∞' if hi is None else f'{hi:g}'}]"


def about_markdown() -> str:
    from ..benchmarks import FAMILIES

    lines = ["## What is measured",
             "Each method scores, for every reasoning step (span) of the model's own trace, how much the step relies "
             "on each of K image regions. The benchmark compares those scores with the ground truth: the drop in the "
             "step's log-probability when each region is removed (exhaustive single-region ablation), and when random "
             "sets of regions are removed together (for LDS).",
             "", "## Benchmark families", "",
             "| family | task (synthetic twin) | stands in for |", "|---|---|---|"]
    for name, module in FAMILIES.items():
        lines.append(f"| {name} | {module.DESCRIPTION} | {', '.join(module.PAPER_SETS)} |")
    lines += ["", "## Metrics", "",
              f"The table ranks by **{RANKING_METRIC}**; pick any other metric above the table.", "",
              "| metric | better | range | meaning |", "|---|---|---|---|"]
    for name, metric in METRICS.items():
        better = "higher" if metric.higher_is_better else "lower"
        shown = name.replace("_", "\\_")
        lines.append(f"| {shown} | {better} | {_range_text(metric)} | {metric.description} |")
    lines += ["", "Span metrics are averaged over all spans of a benchmark; cost metrics over samples. The table "
              "shows seconds per token as **ms per token**.",
              "", "## Protocol", "",
              "Runs are ranked together only when they share a protocol: the region protocol, the number of regions "
              "K, the ablation operator, the sample split, the source (synthetic twins or a real set) and the number "
              "of random region subsets for LDS. The default protocol, shown first, is "
              f"**{DEFAULT_PROTOCOL}** (`vattr-bench evaluate` with its defaults: "
              + ", ".join(f"`{k}={v}`" for k, v in PROTOCOL_DEFAULTS.items() if v is not None) + ").",
              "",
              "**Reference rows** are shown in grey with `ref` in place of a rank and are never ranked: `ablation` "
              "is the ground truth itself (it scores 1 by construction, and its cost is that of computing the truth), "
              "and the null baselines (`random`, and in newer runs `uniform` and `region_area`) show what a method "
              "with no information scores. A rank marked † comes from a run written before `r2_signed` existed "
              "(results.json schema 1), ranked by r2 instead.",
              "", "## How to cite", "", "```bibtex", BIBTEX, "```",
              "", "## How to submit", "",
              "1. Write your method as a plugin: a class with `name` and `attribute(ctx)` returning an "
              "(n_spans, K) array (see `submissions/README.md` in the repository).",
              "2. Run the standard protocol on the standard samples: "
              "`vattr-bench submit --method path/to/method.py:MyMethod --model vattr-tiny`. It writes a bundle "
              "(results.json, samples.jsonl, your plugin file, report.md) and checks it.",
              "3. Check it yourself at any time: `vattr-bench check-submission path/to/bundle`.",
              "4. Upload results.json and samples.jsonl in the **Submit** tab. A valid submission is stored as "
              "*pending review* and shown at once; a maintainer marks it *accepted* after reading the plugin."]
    return "\n".join(lines)
