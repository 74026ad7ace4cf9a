"""The package's own method: pooled attention features through a trained linear estimator."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..amortized import LinearEstimator, attribute_trace
from ..errors import UserError
from .base import AttributionContext, AttributionMethod

_PACKAGED = Path(__file__).parents[1] / "amortized"
SHIPPED = {"vattr-tiny": _PACKAGED / "vattr-tiny.estimator.json"}  # per model, the default: every head
SHIPPED_FEWER_HEADS = {("vattr-tiny", 16): _PACKAGED / "vattr-tiny.16-heads.estimator.json"}


class Amortized(AttributionMethod):
    """Δ̂_k(S) = w·f_{S,k}: one attention pass, no ablation, no gradient. The estimator is the file given as
    ``estimator`` (``--method amortized:estimator=PATH``); without one, ``$VATTR_ESTIMATOR`` (a fallback for
    scripts that set it), else the one shipped for the model. ``heads`` (``amortized:heads=16``) asks for an
    estimator that uses that many heads: without a file, the one shipped for the model with that many; with
    one, a check that it has them. The estimator must have been trained for the same model, region protocol
    and ablation operator (checked on load). Whichever it is, the method's name stays ``amortized``;
    `settings()` records the file and its digest."""

    name = "amortized"

    def __init__(self, estimator: str | Path | None = None, heads: int | None = None):
        if estimator is not None and not Path(estimator).is_file():  # a typo fails before any sample, not on each
            raise FileNotFoundError(f"no estimator file at {estimator}; train one with `vattr-bench train-estimator`")
        if heads is not None and heads < 1:  # the spec's loader has already made it an int
            raise UserError(f"method 'amortized': heads={heads} is not a number of heads (a whole number ≥ 1)")
        self.estimator_path = estimator
        self.heads = heads
        self._loaded: dict = {}

    def load_for(self, model, protocol: str, operator: str) -> LinearEstimator:
        """The estimator for this model, region protocol and ablation operator (checked on load)."""
        path = self.estimator_path or os.environ.get("VATTR_ESTIMATOR") or \
            SHIPPED_FEWER_HEADS.get((model.name, self.heads)) or SHIPPED.get(model.name)
        if path is None:
            raise ValueError(f"no estimator for model {model.name!r}: train one with `vattr-bench train-estimator` "
                             "and give it as --method amortized:estimator=PATH")
        expect = {"model": model.name, "num_layers": model.num_layers, "num_heads": model.num_heads,
                  "regions": protocol, "ablation": operator}
        key = (str(path), tuple(sorted(expect.items())))
        if key not in self._loaded:
            estimator = LinearEstimator.load(Path(path), expect)
            if self.heads is not None and heads_used(estimator) != self.heads:
                shipped = [n for (name, n) in SHIPPED_FEWER_HEADS if name == model.name]
                raise UserError(f"method 'amortized': heads={self.heads}, but the estimator {path} uses "
                                f"{heads_used(estimator)} heads" + (f" (shipped for {model.name}: every head, or "
                                f"{', '.join(map(str, shipped))})" if shipped else "") +
                                f"; train one with `vattr-bench train-estimator --heads {self.heads}`")
            self._loaded[key] = estimator
        return self._loaded[key]

    def settings(self) -> dict:
        """The estimators this run loaded: file (a shipped one by its place in the package, so that the record
        does not depend on where the package is installed) and its content's digest, features (and sign
        weight), heads used, training samples, held-out scores."""
        return {"estimators": [{"path": _shown(path), "sha256": est.digest,
                                "features": est.meta.get("features", "attention"),
                                "heads": heads_used(est),
                                **{k: est.meta[k] for k in ("sign_weight", "n_train", "heldout") if k in est.meta}}
                               for (path, _), est in self._loaded.items()]} if self._loaded else {}

    def estimator_for(self, ctx: AttributionContext) -> LinearEstimator:
        return self.load_for(ctx.model, ctx.regions.protocol, ctx.operator)

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        # its own captured pass (attention rows and value norms together), then the streaming worker's
        # per-span computation: memory of one span, not the (L, H, T, N) attention the baselines share
        return attribute_trace(ctx.model, ctx.prepared, ctx.trace, ctx.regions, self.estimator_for(ctx))


def heads_used(estimator: LinearEstimator) -> int:
    """How many heads an estimator reads: its ``meta["heads"]``, else every weight's."""
    return len(estimator.meta["heads"]) if estimator.meta.get("heads") else len(estimator.weights)


def _shown(path: str) -> str:
    """A file shipped in the package as vattr_bench/amortized/NAME wherever it is installed; others as given."""
    resolved = Path(path).resolve()
    if resolved.parent == _PACKAGED.resolve():
        return str(resolved.relative_to(Path(__file__).resolve().parents[2]))
    return path
