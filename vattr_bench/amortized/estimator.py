"""The linear estimator Δ̂_k(S) = w·f_{S,k} + b, trained once per model with a Pearson-correlation loss.

Training recipe (AT2, carried to images): per example, random region masks v (each region removed with
probability 0.5) and the true subset effect Δ(S, v) of every span; the prediction for a mask is
Σ_k v_k Δ̂_k(S), and the loss is −Pearson(prediction, truth) across the masks of a span, averaged over
spans. Pearson is scale- and shift-free, so w is learned up to scale and the bias cancels; it is kept
for the saved format's sake (and is 0).

Saved format (JSON, documented in README): {"format": "vattr-bench/linear-estimator", "version": 1,
"weights": [L·H floats, layer-major], "bias": float, "meta": {model, num_layers, num_heads, regions, k,
ablation, region_pool, features, n_train, seed, heldout}}; ``features`` is "attention" where absent;
``sign_weight`` (β of |x| + β·x) for direct-logit-signed features;
``heads`` (optional: sorted layer-major indices) for an estimator that uses only those heads (its other
weights are 0), which the streaming worker then computes alone (`select_heads`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..storage import write_text_atomically
from .features import feature_kind, feature_sign_weight

FORMAT = "vattr-bench/linear-estimator"
# what a model/protocol must match for an estimator to apply to it
MATCH_KEYS = ("model", "num_layers", "num_heads", "regions", "ablation", "region_pool")


@dataclass
class LinearEstimator:
    weights: np.ndarray  # (L·H,)
    bias: float = 0.0
    meta: dict = field(default_factory=dict)
    digest: str | None = None  # sha256 of the file it was loaded from (its first 16 hex digits): which estimator

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n_spans, K, L·H) -> (n_spans, K) estimated single-region effects."""
        if features.shape[-1] != len(self.weights):
            raise ValueError(f"features have {features.shape[-1]} dims, the estimator {len(self.weights)} (L·H)")
        return features @ self.weights + self.bias

    def check_heads(self, where="the estimator") -> None:
        """``meta["heads"]``, where given, must be sorted distinct indices of its weights, and every weight
        outside them 0: the streaming worker computes those heads only."""
        heads = self.meta.get("heads")
        if heads is None:
            return
        index = np.asarray(heads)
        if (index.ndim != 1 or len(index) == 0 or not np.issubdtype(index.dtype, np.integer)
                or np.any(np.diff(index) <= 0) or index[0] < 0 or index[-1] >= len(self.weights)):
            raise ValueError(f"{where}: meta 'heads' must be sorted distinct indices below {len(self.weights)}, "
                             f"got {heads!r}")
        outside = np.delete(self.weights, index)
        if np.any(outside != 0):
            raise ValueError(f"{where}: {np.count_nonzero(outside)} weights outside its 'heads' are not 0")

    def save(self, path: Path) -> None:
        payload = {"format": FORMAT, "version": 1, "weights": [float(w) for w in self.weights],
                   "bias": float(self.bias), "meta": self.meta}
        write_text_atomically(Path(path), json.dumps(payload, indent=1))  # retraining into the file in use

    @classmethod
    def load(cls, path: Path, expect: dict | None = None) -> "LinearEstimator":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no estimator at {path}; train one with `vattr-bench train-estimator`")
        raw = path.read_bytes()
        payload = json.loads(raw)
        if payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a vattr-bench linear estimator")
        est = cls(np.asarray(payload["weights"], dtype=np.float64), float(payload["bias"]), payload["meta"],
                  hashlib.sha256(raw).hexdigest()[:16])
        feature_kind(est.meta)  # a kind this version cannot compute fails here, not mid-run
        feature_sign_weight(est.meta)
        est.check_heads(path)
        if expect:
            wrong = {k: (est.meta.get(k), v) for k, v in expect.items() if k in MATCH_KEYS and est.meta.get(k) != v}
            if wrong:
                detail = ", ".join(f"{k}: trained {a!r}, now {b!r}" for k, (a, b) in wrong.items())
                raise ValueError(f"estimator {path} does not fit this run ({detail}); train one for it with "
                                 "`vattr-bench train-estimator`")
        return est


def pearson_rows(pred, target):
    """Pearson correlation of each last-axis row of two torch tensors (the estimator's loss reads its mean)."""
    pred = pred - pred.mean(-1, keepdim=True)
    target = target - target.mean(-1, keepdim=True)
    return (pred * target).sum(-1) / (pred.norm(dim=-1) * target.norm(dim=-1) + 1e-8)


TARGETS = ("subsets", "singles", "both")


def span_design_rows(examples: list[dict], targets: str):
    """Per span, the design rows and true effects the Pearson loss compares, grouped by row count:
    "subsets": X = masks @ f_S (M, F) against Δ(S, v); "singles": X = f_S (K, F) against Δ_k(S)."""
    import torch

    groups: dict[tuple[str, int], tuple[list, list]] = {}
    for ex in examples:
        feats = torch.as_tensor(ex["features"], dtype=torch.float64)  # (S, K, F)
        parts = []
        if targets in ("subsets", "both"):
            masks = torch.as_tensor(ex["masks"], dtype=torch.float64)
            parts.append(("subsets", lambda s, masks=masks, feats=feats: masks @ feats[s],
                          torch.as_tensor(ex["subset_effects"], dtype=torch.float64).T))
        if targets in ("singles", "both"):
            parts.append(("singles", lambda s, feats=feats: feats[s],
                          torch.as_tensor(ex["single_effects"], dtype=torch.float64)))
        for kind, design, effects in parts:  # effects: (S, rows)
            for s in range(feats.shape[0]):
                if effects[s].std() > 1e-9:  # a span no ablation moves teaches nothing
                    xs, ys = groups.setdefault((kind, effects.shape[1]), ([], []))
                    xs.append(design(s))
                    ys.append(effects[s])
    return [(kind, torch.stack(xs), torch.stack(ys)) for (kind, _), (xs, ys) in groups.items()]


def train_estimator(examples: list[dict], epochs: int = 300, lr: float = 0.05, seed: int = 0,
                    targets: str = "both", heads: np.ndarray | None = None) -> np.ndarray:
    """``examples``: dicts with "features" (S, K, F), "masks" (M, K) bool, "subset_effects" (M, S) and
    "single_effects" (S, K). Returns w (F,) maximising the mean per-span Pearson between the predicted
    and true effects: of random region subsets (Σ_k v_k w·f_{S,k} vs Δ(S, v)), of single regions
    (w·f_{S,k} vs Δ_k(S)), or both (the two means averaged). With ``heads`` (indices into F), only those
    features are fitted; the others' weights are 0."""
    import torch

    if targets not in TARGETS:
        raise ValueError(f"unknown estimator targets {targets!r}; choose from {TARGETS}")
    if heads is not None:
        n_features = examples[0]["features"].shape[-1]
        sub = train_estimator([dict(ex, features=ex["features"][..., heads]) for ex in examples], epochs, lr, seed, targets)
        w = np.zeros(n_features)
        w[heads] = sub
        return w
    torch.manual_seed(seed)
    groups = span_design_rows(examples, targets)
    if not groups:
        raise ValueError("no training span has any ablation effect")
    flat = torch.cat([X.reshape(-1, X.shape[-1]) for _, X, _ in groups])
    scale = flat.std(0) + 1e-12  # standardise features for the optimiser
    w = torch.zeros(flat.shape[-1], dtype=torch.float64)
    w.data.normal_(0, 0.01)
    w.requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    kinds = sorted({kind for kind, _, _ in groups})
    for _ in range(epochs):
        pearsons = {kind: [] for kind in kinds}
        for kind, X, Y in groups:
            pearsons[kind].append(pearson_rows((X / scale) @ w, Y))
        loss = -torch.stack([torch.cat(p).mean() for p in pearsons.values()]).mean()  # each kind weighs the same
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (w.detach() / scale).numpy()


def select_heads(examples: list[dict], n_heads: int, seed: int = 0, targets: str = "both",
                 all_heads_fit: np.ndarray | None = None) -> np.ndarray:
    """The ``n_heads`` features (heads) an estimator keeps when it may use only that many, chosen on
    ``examples`` alone: fit on the heads still in, drop the less important half (|w_h| times the spread of
    f_h over every (span, region)), fit again, until ``n_heads`` are left. Sorted indices into F. The
    streaming worker's cost grows with the heads an estimator uses (`SpanAttributor` computes no others).
    ``all_heads_fit``: the first round's fit (all heads, same examples and seed) where the caller has it."""
    n_features = examples[0]["features"].shape[-1]
    if not 1 <= n_heads <= n_features:
        raise ValueError(f"cannot keep {n_heads} of {n_features} heads")
    spread = np.concatenate([ex["features"].reshape(-1, n_features) for ex in examples]).std(0)
    kept = np.arange(n_features)
    while len(kept) > n_heads:
        first = len(kept) == n_features and all_heads_fit is not None
        w = all_heads_fit if first else train_estimator(examples, seed=seed, targets=targets, heads=kept)
        importance = np.abs(w[kept]) * spread[kept]
        keep = max(n_heads, len(kept) // 2)
        kept = np.sort(kept[np.argsort(-importance, kind="stable")[:keep]])
    return kept
