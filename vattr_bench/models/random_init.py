"""Random-weight instances of the supported architectures at a chosen size, for timing (`vattr-bench perf`).

Cost does not need trained weights, only the real architecture at the real size. `build_random_model`
makes one from the architecture's own transformers config, model, image-processor and processor classes —
no downloads; only the tokenizer is ours (a word-level `tokenizers` model with the architecture's special
tokens), since real vocabularies are hub files. `save_random_model` writes such a model's config,
tokenizer and processor files to a folder (no weights), and `vattr-bench perf --model FOLDER --random-init`
(`load_model(..., random_init=True)`) builds the model from that config with seeded random weights; a
folder holding a real checkpoint's config.json and processor files works the same way.

Random weights do not write sentences, so perf makes such a model write each sample's reference trace
(`force_reference_traces`): spans then close where they would for a model that reasons, and every
method is timed on the same tokens and spans. Nothing such a model attributes is faithful: costs only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ARCHS = ("qwen2_5_vl", "qwen3_vl", "glm4v")

# Per architecture: special tokens in id order and a chat template ending where the assistant's trace starts
_QWEN_SPECIAL = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
_QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                  "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
_GLM_SPECIAL = ["<pad>", "<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
                "<|end_of_image|>", "<|image|>", "<|video|>", "<|begin_of_video|>", "<|end_of_video|>"]
_GLM_TEMPLATE = ("[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n<think>{% endif %}")


def benchmark_words() -> list[str]:
    """vattr-tiny's word vocabulary (its special tokens aside): every word the benchmarks' prompts and
    reference traces use, so that a random model's tokenizer encodes them without unknown tokens."""
    from . import TINY_CHECKPOINT

    tokenizer = json.loads((TINY_CHECKPOINT / "tokenizer.json").read_text())
    special = {t["content"] for t in tokenizer["added_tokens"]}
    vocab = tokenizer["model"]["vocab"]
    return [w for w in sorted(vocab, key=vocab.get) if w not in special]


def word_tokenizer(special: list[str], words: list[str]):
    """A word-level fast tokenizer: ``special`` (pad first, end-of-sequence second), the thinking markers,
    an unknown token, then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(special + ["<think>", "</think>", "<unk>"] + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=special[1], pad_token=special[0], unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": special[1:]})
    tok.add_tokens(["<think>", "</think>"])
    return tok


def build_random_model(arch: str, words: list[str] | None = None, hidden_size: int = 64, num_layers: int = 2,
                       num_heads: int = 4, num_kv_heads: int | None = None, intermediate_size: int | None = None,
                       head_dim: int | None = None, max_position_embeddings: int = 32768, patch_size: int = 8,
                       merge_size: int = 2, vision_depth: int = 2, vision_hidden_size: int = 32, seed: int = 0):
    """(model, processor): a random-weight ``arch`` model with a decoder of the given shape and a small
    vision tower (its cost is paid once per prompt; the decoder is what the methods' costs scale with).
    ``words``: the tokenizer's vocabulary (default `benchmark_words`). ``num_kv_heads`` defaults to
    ``num_heads``, ``intermediate_size`` to 3 × hidden, ``head_dim`` to hidden / heads."""
    from transformers import (Glm4vConfig, Glm4vForConditionalGeneration, Glm4vImageProcessorPil, Glm4vProcessor,
                              Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor)

    from .hf import image_only_processor

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    if hidden_size % num_heads and head_dim is None:
        raise ValueError(f"--hidden-size {hidden_size} is not a multiple of --num-heads {num_heads}")
    head_dim = head_dim or hidden_size // num_heads
    kv_heads = num_kv_heads or num_heads
    if num_heads % kv_heads:
        raise ValueError(f"--num-kv-heads {kv_heads} does not divide --num-heads {num_heads}")
    words = benchmark_words() if words is None else words
    torch.manual_seed(seed)

    def text_config(tok, rotary_dim: int, **extra) -> dict:
        half = rotary_dim // 2  # M-RoPE splits the rotary frequencies over (time, height, width)
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [half - 2 * (half // 4), half // 4, half // 4]}
        return dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size or 3 * hidden_size,
                    num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=kv_heads,
                    head_dim=head_dim, max_position_embeddings=max_position_embeddings, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, bos_token_id=None, rope_parameters={**rope, **extra.pop("rope", {})}, **extra)

    vision = dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                  num_heads=4, patch_size=patch_size, spatial_merge_size=merge_size, temporal_patch_size=2,
                  out_hidden_size=hidden_size)
    image_kwargs = dict(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2,
                        size={"shortest_edge": 16 * 16, "longest_edge": 128 * 128})
    if arch in ("qwen2_5_vl", "qwen3_vl"):
        tok = word_tokenizer(_QWEN_SPECIAL, words)
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in [
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
        if arch == "qwen2_5_vl":
            config = Qwen2_5_VLConfig(text_config=text_config(tok, head_dim),
                                      vision_config={**vision, "window_size": 2 * patch_size * merge_size,
                                                     "fullatt_block_indexes": [vision_depth - 1]}, **ids)
            model, proc_cls = Qwen2_5_VLForConditionalGeneration(config), image_only_processor(Qwen2_5_VLProcessor)
        else:
            config = Qwen3VLConfig(text_config=text_config(tok, head_dim, rope={"mrope_interleaved": True}),
                                   vision_config={**vision, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
                                   **ids)
            model, proc_cls = Qwen3VLForConditionalGeneration(config), image_only_processor(Qwen3VLProcessor)
        processor = proc_cls(image_processor=Qwen2VLImageProcessorPil(**image_kwargs), tokenizer=tok,
                             chat_template=_QWEN_TEMPLATE)
    else:
        tok = word_tokenizer(_GLM_SPECIAL, words)
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in [
            ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
            ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
            ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>")]}
        config = Glm4vConfig(text_config=text_config(tok, head_dim // 2, rope={"partial_rotary_factor": 0.5}),
                             vision_config={**vision, "image_size": 64}, **ids)
        model = Glm4vForConditionalGeneration(config)
        processor = image_only_processor(Glm4vProcessor)(image_processor=Glm4vImageProcessorPil(**image_kwargs),
                                                         tokenizer=tok, chat_template=_GLM_TEMPLATE)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


def save_random_model(output: Path, arch: str, weights: bool = False, **shape) -> dict:
    """Write a random ``arch`` model's config, generation config, tokenizer and processor files (and, with
    ``weights``, its weights) to ``output``; returns what was written as {"path", "decoder_parameters"}."""
    model, processor = build_random_model(arch, **shape)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if weights:
        model.save_pretrained(output)
    else:
        model.config.save_pretrained(output)
        model.generation_config.save_pretrained(output)
    processor.save_pretrained(output)
    return {"path": str(output), "decoder_parameters": decoder_parameters(model)}


def decoder_parameters(model) -> int:
    """Parameters of the language model (decoder layers, embeddings, final norm), the LM head aside."""
    return sum(p.numel() for p in model.model.language_model.parameters())


def random_init_model(source: str, dtype, seed: int = 0):
    """The architecture in ``source``'s config.json with seeded random weights (no weight file read)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=None if dtype == "auto" else dtype)
    from transformers import GenerationConfig

    try:  # its end-of-sequence and pad ids, where the folder has a generation config
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:
        pass
    return model


def random_estimator(model, regions: str, ablation: str, features: str = "direct-logit-signed",
                     sign_weight: float = 0.25, seed: int = 0):
    """A linear estimator of the right shape (L·H weights) with random weights, for TIMING ONLY: its values do
    not change its cost, its feature kind does (default: the kind shipped for vattr-tiny)."""
    from ..amortized import LinearEstimator

    weights = np.random.default_rng(seed).normal(size=model.num_layers * model.num_heads)
    meta = {"model": model.name, "num_layers": model.num_layers, "num_heads": model.num_heads, "regions": regions,
            "ablation": ablation, "region_pool": "sum", "features": features, "random_weights": True}
    if features == "direct-logit-signed":
        meta["sign_weight"] = sign_weight
    return LinearEstimator(weights, 0.0, meta)


class ForceTokens:
    """A logits processor: greedy decoding writes ``ids`` (then end-of-sequence), whatever the scores."""

    def __init__(self, ids: list[int], prompt_length: int, eos: int):
        self.ids, self.prompt_length, self.eos = ids, prompt_length, eos

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[t] if t < len(self.ids) else self.eos] = 0.0
        return forced


def force_reference_traces(vlm, samples_and_inputs) -> None:
    """From now on, generating for the prompt of one of these (sample, prepared input) pairs writes the
    sample's reference trace (`Sample.reference_trace`, encoded by the model's tokenizer; its opening
    `<think>` dropped where the prompt already opened it). Every mode that perf times goes through
    `model.generate`, so every mode writes the same tokens."""
    from transformers import LogitsProcessorList

    from ..types import THINK_OPEN

    traces = {}
    for sample, prepared in samples_and_inputs:
        text = sample.reference_trace
        prompt_text = vlm.tokenizer.decode(prepared.inputs["input_ids"][0].tolist())
        if prompt_text.rstrip().endswith(THINK_OPEN):
            text = text.removeprefix(THINK_OPEN)
        traces[tuple(prepared.inputs["input_ids"][0].tolist())] = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    generate, eos = vlm.model.generate, min(vlm.eos_ids)

    def forced_generate(*args, **kwargs):
        prompt = kwargs["input_ids"]
        key = tuple(prompt[0].tolist())
        if key not in traces:
            raise KeyError("force_reference_traces: a prompt with no reference trace was generated for")
        processors = LogitsProcessorList([ForceTokens(traces[key], prompt.shape[1], eos)])
        return generate(*args, logits_processor=processors, **kwargs)

    vlm.model.generate = forced_generate
