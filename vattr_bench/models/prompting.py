"""Prompt building and answer reading shared by every model adapter and the training script."""
from __future__ import annotations

import re

from ..types import THINK_CLOSE


def build_prompt(processor, prompt: str) -> str:
    """The model's own chat template around one image and the prompt, ready for the assistant's turn."""
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: give the model a question or instruction")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.strip()}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_from_trace(text: str) -> str:
    """The answer is what follows `</think>`; a trace that never closes its thinking has no answer."""
    if THINK_CLOSE not in text:
        return ""
    return text.split(THINK_CLOSE, 1)[1].strip()


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .")


def is_correct(answer: str, reference: str | None) -> bool | None:
    """Exact match after whitespace/case normalisation; None when there is no reference."""
    if reference is None:
        return None
    return normalize_answer(answer) == normalize_answer(reference)
