"""The model adapter contract: everything downstream (regions, ablation, methods, streaming) talks to a
model only through this interface.

Visual tokens are numbered 0..N-1 in the order the model sees them; ``visual_token_boxes`` says which
pixels of the *original* image each one covers, so regions drawn on the image map to visual tokens.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..types import Trace

if TYPE_CHECKING:
    import torch


@dataclass
class PreparedInput:
    """A processed (image, prompt) pair, ready for teacher-forced passes over any trace."""

    inputs: dict  # processor output, batch of one
    image: Image.Image  # the original image
    prompt: str
    visual_positions: np.ndarray  # (N,) indices of the visual tokens in inputs["input_ids"][0]
    visual_grid: tuple[int, int]  # (rows, cols) of visual tokens, row-major

    @property
    def prompt_length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def n_visual_tokens(self) -> int:
        return len(self.visual_positions)


@dataclass(frozen=True)
class CaptureOptions:
    """What an attention capture keeps besides each query row and its log-sum-exp (`capture_visual_attention`).
    The amortized attributor derives them from its estimator (`amortized.features.capture_options`)."""

    first_row: int | None = None  # the first query position recorded; None: P-1, the row predicting trace token 0
    value_norms: bool = False  # ‖W_O^h v_n‖ of the visual tokens (value-weighted features)
    logit_readout: bool = False  # the visual values and the logit readout (`logit_values`; logit-weighted features)
    norm_scale: bool = False  # each row's 1/rms at the final norm (`token_scales`; direct-logit features)
    heads: tuple[int, ...] | None = None  # per-span reads cover only these (layer-major indices); None: every head
    on_device: bool | None = None  # rows kept and read on the model's accelerator; None: when it has one

    def __post_init__(self):
        if self.heads is not None:  # a list from an estimator's JSON: kept as a tuple, so the options stay hashable
            object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))


class VisionLanguageModel(ABC):
    """Everything the harness (generate, evaluate, regions, ablation), the built-in methods and streaming call
    on a model. The abstract methods are required; the others have a default that raises NotImplementedError
    and are needed only by the features that name them (streaming, the amortized features, TAM). Two
    built-in methods read a Hugging Face adapter's internals beyond this interface and say so when they are
    missing: ``captum_ablation`` (its processor, tokenizer and torch model) and ``attnlrp`` (its decoder)."""

    name: str  # the model's name as results record it (a built-in name, a hub id or a checkpoint folder)
    num_layers: int  # decoder layers L
    num_heads: int  # attention heads per layer H (query heads)
    eos_ids: set[int]  # token ids that end a trace (streaming stops a trace at the first one)
    device: torch.device  # where inputs go; gradient methods put their tensors here
    dtype: torch.dtype  # the weights' dtype (recorded with results; read with getattr where optional)

    @abstractmethod
    def prepare(self, image: Image.Image, prompt: str) -> PreparedInput:
        """The processor's inputs for (image, prompt) as a PreparedInput: the model's inputs, the visual
        tokens' positions in them and their (rows, cols) grid."""

    @abstractmethod
    def generate(self, prepared: PreparedInput, max_new_tokens: int = 256) -> Trace:
        """The greedy trace: token ids (the end-of-sequence token excluded), text, spans, per-token log-probs
        and the answer read from it."""

    @abstractmethod
    def trace_from_ids(self, prepared: PreparedInput, ids) -> Trace:
        """The Trace of given trace token ids (a generated or cached trace): the same Trace `generate` returns
        for them — text, spans, teacher-forced per-token log-probs and the answer. evaluate rebuilds cached
        traces with it."""

    @abstractmethod
    def decode(self, ids) -> str:
        """The text of token ids, special tokens dropped; spans are split on it (one id at a time too, as
        streaming does)."""

    def generate_ids(self, prepared: PreparedInput, max_new_tokens: int = 256, streamer=None) -> list[int]:
        """Greedy trace token ids without scoring them; ``streamer.put`` gets the prompt ids, then each
        new token as it is chosen (the transformers streamer protocol). Streaming builds on it."""
        raise NotImplementedError(f"{type(self).__name__} cannot stream generation")

    def capture_visual_attention(self, prepared: PreparedInput, options: CaptureOptions | None = None):
        """Context manager yielding a VisualAttentionCapture that records, during any forward inside it, each
        query row at position ≥ ``options.first_row`` to the visual tokens with its log-sum-exp — the attention
        features without the eager kernel (models/capture/) — and what else ``options`` asks for (default: nothing else)."""
        raise NotImplementedError(f"{type(self).__name__} cannot capture attention")

    def visual_value_norms(self, prepared: PreparedInput) -> np.ndarray:
        """(L, H, N) ‖W_O^h v_n‖: how much each head writes per unit of attention to each visual token
        (the value-weighted amortized features)."""
        raise NotImplementedError(f"{type(self).__name__} gives no value norms; use an estimator trained "
                                  "with --features attention")

    @abstractmethod
    def token_logprobs(self, prepared: PreparedInput, trace_ids, image: Image.Image | None = None,
                       knockout: np.ndarray | None = None) -> np.ndarray:
        """Teacher-forced log p(y_t | x, y<t) for every trace token, shape (T,).

        ``image`` replaces the input image (pixel-space ablation: same size, same prompt);
        ``knockout`` is a boolean (N,) mask of visual tokens no text token may attend to.
        """

    @abstractmethod
    def visual_token_boxes(self, prepared: PreparedInput) -> np.ndarray:
        """(N, 4) float boxes (x0, y0, x1, y1) in original-image pixels, one per visual token."""

    @abstractmethod
    def attention_to_visual(self, prepared: PreparedInput, trace_ids) -> np.ndarray:
        """(L, H, T, N) attention weights from each trace token to each visual token, every layer and head."""

    @abstractmethod
    def attention_matrices(self, prepared: PreparedInput, trace_ids) -> np.ndarray:
        """(L, H, S, S) full decoder attention over prompt + trace."""

    def position_logits(self, prepared: PreparedInput, trace_ids, classes) -> np.ndarray:
        """(S, C) the logit of each vocabulary id in ``classes`` at every position of prompt + trace, as the
        output head computes it from the last layer's (final-normed) hidden state — at the visual tokens
        too, where no prediction is read (TAM's activation maps; position P-1+t predicts trace token t)."""
        raise NotImplementedError(f"{type(self).__name__} gives no per-position logits")

    @abstractmethod
    def visual_features(self, prepared: PreparedInput) -> np.ndarray:
        """(N, D) the visual-token embeddings the decoder receives."""

    @abstractmethod
    def logprobs_from_visual_embeddings(self, prepared: PreparedInput, trace_ids, visual_embeds):
        """Differentiable (B, T) trace log-probs with the visual embeddings replaced by (B, N, D)."""
