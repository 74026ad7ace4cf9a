"""Tiny random instances of the paper's architectures, built from their real transformers config,
model, image-processor and processor classes — no downloads. Only the tokenizer is ours (a word-level
`tokenizers` model carrying each architecture's own special tokens), since real vocabularies are hub files.
The builder is the package's (`vattr_bench.models.random_init`, which `vattr-bench make-random-model` uses
at any size); the tests use it at this shape and with this small vocabulary.
"""
from __future__ import annotations

from vattr_bench.models.hf import HFVisionLanguageModel
from vattr_bench.models.random_init import ARCHS, build_random_model

WORDS = "what color is the circle square ? a red blue . bar one two 1 2 3 yes no".split()
PATCH, MERGE = 8, 2
SHAPE = dict(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
             max_position_embeddings=1024, patch_size=PATCH, merge_size=MERGE, vision_depth=2, vision_hidden_size=32)


def build(arch: str) -> HFVisionLanguageModel:
    model, processor = build_random_model(arch, words=WORDS, seed=0, **SHAPE)
    return HFVisionLanguageModel(model, processor, f"tiny-random-{arch}")


__all__ = ["ARCHS", "WORDS", "build"]
