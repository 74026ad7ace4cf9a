"""Tiny random instances of the paper's architectures, built from their real transformers config,
model, image-processor and processor classes — no downloads. Only the tokenizer is ours (a word-level
`tokenizers` model carrying each architecture's own special tokens), since real vocabularies are hub files.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessorPil,
    Glm4vProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from vattr_bench.models.hf import HFVisionLanguageModel, image_only_processor

WORDS = "what color is the circle square ? a red blue . bar one two 1 2 3 yes no".split()
PATCH, MERGE = 8, 2

# Per architecture: (special tokens in id order, chat template, image token)
_QWEN_SPECIAL = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
_QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                  "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
_GLM_SPECIAL = ["<pad>", "<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
                "<|end_of_image|>", "<|image|>", "<|video|>", "<|begin_of_video|>", "<|end_of_video|>"]
_GLM_TEMPLATE = ("[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n<think>{% endif %}")


def _tokenizer(special: list[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(special + ["<think>", "</think>", "<unk>"] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": special[1:]})
    tok.add_tokens(["<think>", "</think>"])
    return tok


def _text_config(tok, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, **extra)


def _vision_config(**extra) -> dict:
    return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=PATCH, spatial_merge_size=MERGE,
                temporal_patch_size=2, out_hidden_size=64, **extra)


def _image_processor(cls):
    return cls(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
               size={"shortest_edge": 16 * 16, "longest_edge": 128 * 128})


def build(arch: str) -> HFVisionLanguageModel:
    torch.manual_seed(0)
    mrope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
    if arch in ("qwen2_5_vl", "qwen3_vl"):
        tok = _tokenizer(_QWEN_SPECIAL)
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
               ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
        if arch == "qwen2_5_vl":
            config = Qwen2_5_VLConfig(text_config=_text_config(tok, rope_parameters=mrope),
                                      vision_config=_vision_config(window_size=32, fullatt_block_indexes=[1]), **ids)
            model, proc_cls = Qwen2_5_VLForConditionalGeneration(config), image_only_processor(Qwen2_5_VLProcessor)
        else:
            config = Qwen3VLConfig(text_config=_text_config(tok, rope_parameters={**mrope, "mrope_interleaved": True}),
                                   vision_config=_vision_config(num_position_embeddings=64, deepstack_visual_indexes=[0]),
                                   **ids)
            model, proc_cls = Qwen3VLForConditionalGeneration(config), image_only_processor(Qwen3VLProcessor)
        processor = proc_cls(image_processor=_image_processor(Qwen2VLImageProcessorPil), tokenizer=tok,
                             chat_template=_QWEN_TEMPLATE)
    elif arch == "glm4v":
        tok = _tokenizer(_GLM_SPECIAL)
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in [("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
               ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
               ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>")]}
        glm_rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5}
        config = Glm4vConfig(text_config=_text_config(tok, rope_parameters=glm_rope),
                             vision_config=_vision_config(image_size=64), **ids)
        model = Glm4vForConditionalGeneration(config)
        processor = image_only_processor(Glm4vProcessor)(image_processor=_image_processor(Glm4vImageProcessorPil), tokenizer=tok,
                                   chat_template=_GLM_TEMPLATE)
    else:
        raise ValueError(arch)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return HFVisionLanguageModel(model, processor, f"tiny-random-{arch}")


ARCHS = ("qwen2_5_vl", "qwen3_vl", "glm4v")
