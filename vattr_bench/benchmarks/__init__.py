"""The five task families and their samples.

Each family module holds a seeded synthetic generator (with ground-truth evidence boxes per step) and
names the real sets it stands in for. Sample ``i`` of a family and split is drawn from its own RNG
stream, keyed by (seed, family, split, i), so the splits are disjoint and any sample can be rebuilt
alone.

Each family also has a hard variant, ``<family>-hard`` (hard.py: distractors, occlusion, noise), on which
vattr-tiny fails often enough to study failing traces. ``all`` names the five standard families, ``hard``
the five hard ones; the tiny model is trained and its vocabulary built on the standard ones only.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ..types import Sample
from . import code, document, general, math, science

FAMILIES: dict[str, ModuleType] = {m.FAMILY: m for m in (math, science, document, code, general)}
# the hard variants, after the standard families so that the standard samples' RNG keys stay what they were
from .hard import HARD_VARIANTS, HardVariant  # noqa: E402,F401  (re-exported)

ALL_FAMILIES: dict = {**FAMILIES, **HARD_VARIANTS}
# "train"/"val" teach and select vattr-tiny, "estimator" trains attribution estimators, "test" is evaluated.
SPLITS = ("train", "val", "estimator", "test")


def resolve_families(spec: str) -> list[str]:
    """'all' (the five standard families), 'hard' (their five hard variants) or a comma list of family names
    -> list of names, with a clear error for unknown ones."""
    groups = {"all": list(FAMILIES), "hard": list(HARD_VARIANTS)}
    names = [n for part in spec.split(",") if part.strip() for n in groups.get(part.strip(), [part.strip()])]
    unknown = [n for n in names if n not in ALL_FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown benchmark {', '.join(unknown) or spec!r}; choose 'all', 'hard' or from: "
                         f"{', '.join(ALL_FAMILIES)}")
    return list(dict.fromkeys(names))


def synthetic_sample(family: str, index: int, split: str = "test", seed: int = 0) -> Sample:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    (name,) = resolve_families(family)
    key = [seed, list(ALL_FAMILIES).index(name), SPLITS.index(split), index]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    sample_id = f"{name}-{split}-{seed}-{index}"
    if name in HARD_VARIANTS:  # the standard sample i of the base family, made hard from a stream of its own
        variant = HARD_VARIANTS[name]
        return variant.harden(synthetic_sample(variant.base.FAMILY, index, split, seed), rng, sample_id)
    return FAMILIES[name].synthetic_sample(rng, sample_id)


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
    if family in HARD_VARIANTS:
        raise ValueError(f"{family} is a synthetic variant: it has no real set (use --source synthetic)")
    from .real import DEFAULT_REAL_SET, load_real_samples

    return load_real_samples(real_set or DEFAULT_REAL_SET[family], limit, data=data, family=family)
