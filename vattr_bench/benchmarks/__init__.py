"""The five task families and their samples.

Each family module holds a seeded synthetic generator (with ground-truth evidence boxes per step) and
names the real sets it stands in for. Sample ``i`` of a family and split is drawn from its own RNG
stream, keyed by (seed, family, split, i), so the splits are disjoint and any sample can be rebuilt
alone.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ..types import Sample
from . import code, document, general, math, science

FAMILIES: dict[str, ModuleType] = {m.FAMILY: m for m in (math, science, document, code, general)}
# "train"/"val" teach and select vattr-tiny, "estimator" trains attribution estimators, "test" is evaluated.
SPLITS = ("train", "val", "estimator", "test")


def resolve_families(spec: str) -> list[str]:
    """'all' or a comma list of family names -> list of names, with a clear error for unknown ones."""
    names = list(FAMILIES) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown benchmark {', '.join(unknown) or spec!r}; choose 'all' or from: {', '.join(FAMILIES)}")
    return names


def synthetic_sample(family: str, index: int, split: str = "test", seed: int = 0) -> Sample:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    (name,) = resolve_families(family)
    key = [seed, list(FAMILIES).index(name), SPLITS.index(split), index]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    return FAMILIES[name].synthetic_sample(rng, f"{name}-{split}-{seed}-{index}")


def synthetic_samples(family: str, n: int, split: str = "test", seed: int = 0, start: int = 0) -> list[Sample]:
    return [synthetic_sample(family, i, split, seed) for i in range(start, start + n)]


SOURCES = ("synthetic", "real")


def load_samples(family: str, limit: int, source: str = "synthetic", split: str = "test", seed: int = 0,
                 data: str | None = None, real_set: str | None = None) -> list[Sample]:
    """The samples a run evaluates: the synthetic twin (default) or a real set through `datasets`."""
    if source == "synthetic":
        return synthetic_samples(family, limit, split=split, seed=seed)
    if source != "real":
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    from .real import DEFAULT_REAL_SET, load_real_samples

    return load_real_samples(real_set or DEFAULT_REAL_SET[family], limit, data=data, family=family)
