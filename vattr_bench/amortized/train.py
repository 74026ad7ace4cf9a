"""`vattr-bench train-estimator`: collect (features, subset effects) on split "estimator" — disjoint from
the "test" split every evaluation uses — fit the linear estimator, report held-out R² and LDS, save it."""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ..benchmarks import resolve_families, synthetic_sample
from ..metrics import lds, pearson_per_span
from ..regions import make_regions, random_subsets, single_region_effects, subset_effects
from .estimator import LinearEstimator, train_estimator
from .features import span_region_features


def collect_example(model, sample, regions: str, k: int, ablation: str, n_subsets: int, seed: int, region_pool: str) -> dict | None:
    prepared = model.prepare(sample.image, sample.prompt)
    trace = model.generate(prepared, max_new_tokens=128)
    if not trace.spans:
        return None
    reg, _ = make_regions(regions, model, prepared, k=k, sample=sample)
    feats = span_region_features(model.attention_to_visual(prepared, trace.token_ids), trace.spans, reg.token_matrix, region_pool)
    masks = random_subsets(reg.k, n_subsets, seed=seed)
    return {"family": sample.family, "features": feats, "masks": masks,
            "subset_effects": subset_effects(model, prepared, trace, reg, masks, ablation),
            "single_effects": single_region_effects(model, prepared, trace, reg, ablation)}


def heldout_scores(weights: np.ndarray, examples: list[dict]) -> dict:
    """Mean over spans of R² (squared Pearson vs single-region Δ) and LDS (vs subset Δ)."""
    r, l = [], []
    for ex in examples:
        pred = ex["features"] @ weights
        r.extend(pearson_per_span(pred, ex["single_effects"]))
        l.extend(lds(pred, ex["masks"], ex["subset_effects"]))
    r, l = np.array(r), np.array(l)
    return {"r2": float(np.nanmean(r ** 2)), "pearson": float(np.nanmean(r)), "lds": float(np.nanmean(l)),
            "n_spans": int(np.isfinite(r).sum())}


def run(model, model_name: str, benchmark: str, n_train: int, output, regions="feature-ward", k=16,
        ablation="knockout", seed=0, n_subsets=32, region_pool="sum", heldout_fraction=0.2, log=print) -> LinearEstimator:
    families = resolve_families(benchmark)
    per_family = max(1, n_train // len(families))
    examples = []
    for family in families:
        for i in tqdm(range(per_family), desc=f"collect {family}", unit="sample"):
            ex = collect_example(model, synthetic_sample(family, i, "estimator", seed), regions, k, ablation,
                                 n_subsets, seed + i, region_pool)
            if ex is not None:
                examples.append(ex)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    n_held = max(1, int(len(examples) * heldout_fraction))
    held, train = [examples[i] for i in order[:n_held]], [examples[i] for i in order[n_held:]]
    weights = train_estimator(train, seed=seed)
    scores = heldout_scores(weights, held)
    log(f"held-out ({len(held)} samples, {scores['n_spans']} spans): r2 {scores['r2']:.3f}  "
        f"pearson {scores['pearson']:.3f}  lds {scores['lds']:.3f}")
    meta = {"model": model_name, "num_layers": model.num_layers, "num_heads": model.num_heads, "regions": regions,
            "k": k, "ablation": ablation, "region_pool": region_pool, "n_train": len(train), "n_heldout": len(held),
            "split": "estimator", "seed": seed, "n_subsets": n_subsets, "benchmarks": families, "heldout": scores}
    est = LinearEstimator(weights, 0.0, meta)
    est.save(output)
    log(f"wrote {output}")
    return est
