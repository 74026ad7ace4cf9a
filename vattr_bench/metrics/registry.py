"""The one list of metrics: name, direction, kind, meaning and how each is computed. evaluate, results.json,
the table, `compare` and the leaderboard all derive from it, so a metric is added in one place.

``kind`` is "span" (one value per span, averaged over spans) or "cost" (one value per sample, averaged over
samples). ``range`` is the interval a valid value lies in (None: unbounded on that side); the submission
validator checks it. A span metric's ``compute`` maps the sample's `scoring.SpanEvidence` (the method's scores,
the ablation truth, and what several metrics share, each computed once) to its (n_spans,) values; a cost is
measured by the harness around the method's call instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .scoring import SpanEvidence


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    kind: str  # "span" or "cost"
    range: tuple[float | None, float | None]
    description: str
    compute: Callable[[SpanEvidence], np.ndarray] | None = None  # span metrics only


def _signed_square(r: np.ndarray) -> np.ndarray:
    return np.sign(r) * r ** 2


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("r2_signed", True, "span", (-1.0, 1.0),
           "sign(r)·r², r the Pearson correlation over the K regions between a method's scores and the single-region "
           "ablation effects of the span: as r2, but a method pointing the wrong way scores below 0. The ranking "
           "metric.", lambda e: _signed_square(e.pearson)),
    Metric("r2", True, "span", (0.0, 1.0),
           "r², the squared Pearson correlation between scores and single-region ablation effects over the K regions "
           "(the paper's R²; blind to sign: a perfectly inverted map scores 1).", lambda e: e.pearson ** 2),
    Metric("pearson", True, "span", (-1.0, 1.0),
           "r, the Pearson correlation between scores and single-region ablation effects over the K regions.",
           lambda e: e.pearson),
    Metric("r2_partial_size", True, "span", (-1.0, 1.0),
           "sign(ρ)·ρ², ρ the partial correlation of scores and ablation effects with region size (visual tokens "
           "per region) regressed out of both: what a method knows beyond 'bigger regions matter more'.",
           lambda e: _signed_square(e.partial)),
    Metric("lds", True, "span", (-1.0, 1.0),
           "linear datamodeling score: Spearman correlation, over random region subsets, between the span's true "
           "log-prob drop with the subset removed and the sum of the method's scores over the subset. Constant "
           "scores already reach the subset-size floor (see the uniform baseline).", lambda e: e.lds),
    Metric("deletion_auc", False, "span", (0.0, 1.0),
           "area under the span's probability curve as regions are removed in the method's order, most important "
           "first (lower: the method found what matters sooner).", lambda e: e.deletion_insertion[0]),
    Metric("insertion_auc", True, "span", (0.0, 1.0),
           "area under the span's probability curve as regions are restored in the method's order (higher is "
           "better).", lambda e: e.deletion_insertion[1]),
    Metric("topk_drop", True, "span", (None, None),
           "log-probability the span loses when the method's top-5 regions are removed together (nats).",
           lambda e: e.topk_drop),
    Metric("pointing_game", True, "span", (0.0, 1.0),
           "1 if the span's top region lies on the evidence box of the reasoning step it reads (synthetic samples "
           "with aligned traces only), else 0.", lambda e: e.pointing_game),
    Metric("sec_per_token", False, "cost", (0.0, None),
           "wall-clock seconds the method took for a sample, divided by the trace's tokens."),
    Metric("peak_mem_mb", False, "cost", (0.0, None),
           "peak resident memory of the process above its level when the method started (MB), sampled every few "
           "ms while it runs."),
)}

SPAN_METRICS = tuple(name for name, m in METRICS.items() if m.kind == "span")
COST_METRICS = tuple(name for name, m in METRICS.items() if m.kind == "cost")
HIGHER_IS_BETTER = {name: m.higher_is_better for name, m in METRICS.items()}
RANKING_METRIC = "r2_signed"
