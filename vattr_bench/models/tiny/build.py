"""Build the untrained `vattr-tiny`: a Llava-class model (CLIP vision tower + Llama decoder), a real
`tokenizers` word-level tokenizer and a `LlavaProcessor`, all saved with `save_pretrained`.

Why Llava: it is the plainest Hugging Face VLM — one visual token per image patch, placed in the
sequence where `<image>` stands — so the visual-token map is exact and easy to check, and everything
downstream runs through the same `transformers` classes as a real Llava checkpoint.
Why these sizes: 8×8 patches of a 64×64 image give 64 visual tokens; 4 decoder layers × 16 heads (head
dim 8) give the amortized estimator L·H = 64 attention features at the parameter count of 8 heads (more
heads are more estimator capacity for free); the whole thing stays under 1M parameters (~4 MB in
float32), trains on 2 CPU cores in under 20 minutes, and ships inside the package. RoPE positions up to
4,096 so that `vattr-bench perf` can time long traces.
"""
from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from ...benchmarks import FAMILIES, synthetic_samples
from ...types import THINK_CLOSE, THINK_OPEN

IMAGE_SIZE = 64
PATCH_SIZE = 8
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}<|user|> "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def corpus_words(n_per_family: int = 400) -> list[str]:
    """Every word the synthetic families can write, found by drawing samples (deterministic)."""
    words = {str(i) for i in range(0, 21)}
    for family in FAMILIES:
        for s in synthetic_samples(family, n_per_family, split="train"):
            words.update(s.prompt.split())
            words.update(s.reference_trace.split())
    words -= {THINK_OPEN, THINK_CLOSE}
    return sorted(words)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + [THINK_OPEN, THINK_CLOSE] + corpus_words())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    # <think> and </think> stay ordinary (non-special) tokens, as in real thinking models, so decoding keeps them.
    tok.add_tokens([THINK_OPEN, THINK_CLOSE])
    return tok


def build_processor() -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, seed: int = 0, num_heads: int = 16, num_layers: int = 4,
                hidden_size: int = 128) -> LlavaForConditionalGeneration:
    import torch

    if hidden_size % num_heads:  # Llama would silently build heads of hidden // heads dims, not covering the width
        raise ValueError(f"{num_heads} attention heads do not divide the decoder width {hidden_size}")
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=96,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-1, tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
