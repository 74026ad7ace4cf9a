"""The Hugging Face adapter: one class for every supported transformers VLM.

Two visual-token layouts cover the supported architectures:
- "patch grid" (Llava): one token per ViT patch of the resized (and maybe centre-cropped) image;
- "merged grid" (Qwen2-VL, Qwen2.5-VL / MiMo-VL / Cosmos-Reason1, Qwen3-VL, GLM-4.1V): the image is
  resized to a multiple of patch×merge, and each visual token is a merge×merge block of patches
  (``image_grid_thw`` gives the grid in patches).
Everything else — chat template, generation, teacher forcing, attention — goes through the model's
own transformers classes.
"""
from __future__ import annotations

import inspect
import json
import threading
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from PIL import Image

from ..images import check_image
from ..types import Trace
from .adapter import CaptureOptions, PreparedInput, VisionLanguageModel
from .capture import (CAPTURE_BACKEND, LogitReadout, VisualAttentionCapture, activate, final_norm_hook, o_proj_gram,
                      register_backend)
from .capture.arrays import to_numpy
from .prompting import answer_from_trace, build_prompt
from .spans import split_spans

PATCH_GRID_TYPES = {"llava"}
MERGED_GRID_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v"}
SUPPORTED_MODEL_TYPES = sorted(PATCH_GRID_TYPES | MERGED_GRID_TYPES)
# Sequence-shaped processor outputs and the value a trace token gets in each when the trace is appended.
_SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}


class HFVisionLanguageModel(VisionLanguageModel):
    def __init__(self, model, processor, name: str):
        model_type = model.config.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model {name!r} is a {model_type!r} model; supported architectures: {', '.join(SUPPORTED_MODEL_TYPES)}")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.model_type = model_type
        text_config = model.config.get_text_config()
        self.num_layers = int(text_config.num_hidden_layers)
        self.num_heads = int(text_config.num_attention_heads)
        self.image_token_id = int(getattr(model.config, "image_token_id", None) or model.config.image_token_index)
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self._token_text: dict[int, str] = {}  # decode of single tokens: the span splitter asks per token
        self._readout: LogitReadout | None = None  # built at the first logit-weighted capture
        self._head_readouts: dict[tuple, LogitReadout] = {}  # the same for estimators of some heads, per head set
        # captures open on this model, in any thread, and the decoder's kernel before the first of them (`_capture_kernel`)
        self._capture_lock = threading.Lock()
        self._captures_open = 0
        self._kernel_before_captures: str | None = None
        register_backend()
        self._install_capture_backend()

    @property
    def decoder(self):
        """The transformers language model under the vision tower: its layers and final norm."""
        return self.model.model.language_model

    def _install_capture_backend(self) -> None:
        """An sdpa decoder runs on the capture backend from load: with no capture active it *is* sdpa (same
        function), and a capture then costs no switch — `set_attn_implementation` walks the module tree
        twice a stream, ~0.35 ms (measured in place on vattr-tiny, one-off). Other kernels (eager, flash
        attention on a GPU) are switched per capture instead."""
        if self.decoder.config._attn_implementation == "sdpa":
            self.decoder.set_attn_implementation(CAPTURE_BACKEND)

    @property
    def device(self) -> torch.device:
        """Where inputs go. A model placed by accelerate (`load_model(device_map=…)`) runs from its first
        accelerator, as accelerate's own dispatch decides (the CPU when the map names only "cpu"/"disk");
        its hooks move activations between the devices, and the outputs come back here."""
        placement = getattr(self.model, "hf_device_map", None)
        if placement and len(set(placement.values())) > 1:
            accelerators = [d for d in placement.values() if d not in ("cpu", "disk")]
            return torch.device(accelerators[0] if accelerators else "cpu")
        return next(self.model.parameters()).device

    @contextmanager
    def _weights_on_hand(self, modules):
        """Weights read outside a forward (the logit readout, o_proj grams) of modules accelerate offloaded to
        the CPU or disk are meta tensors until loaded: load them for the block (a no-op for other models)."""
        with ExitStack() as stack:
            if getattr(self.model, "hf_device_map", None):
                from accelerate.utils import align_module_device, has_offloaded_params

                for module in modules:
                    for sub in module.modules():
                        if has_offloaded_params(sub):
                            stack.enter_context(align_module_device(sub))
            yield

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def _on_accelerator(self) -> bool:
        """The default for reads on the device (captures, the logit readout): the model is not on the CPU."""
        return self.device.type != "cpu"

    # -- input ---------------------------------------------------------------------------------------
    def prepare(self, image: Image.Image, prompt: str) -> PreparedInput:
        image = check_image(image)
        text = build_prompt(self.processor, prompt)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt").to(self.device)
        positions = (inputs["input_ids"][0] == self.image_token_id).nonzero().flatten().cpu().numpy()
        grid = self._visual_grid(inputs)
        if len(positions) != grid[0] * grid[1]:
            raise RuntimeError(f"{self.name}: found {len(positions)} image tokens in the prompt, expected a "
                               f"{grid[0]}×{grid[1]} grid; the processor and model config disagree")
        return PreparedInput(dict(inputs), image, prompt, positions, grid)

    def _visual_grid(self, inputs) -> tuple[int, int]:
        if self.model_type in PATCH_GRID_TYPES:
            h, w = inputs["pixel_values"].shape[-2:]
            p = self.processor.patch_size
            return int(h) // p, int(w) // p
        _, h, w = (int(v) for v in inputs["image_grid_thw"][0])
        m = self.processor.image_processor.merge_size
        return h // m, w // m

    def visual_token_boxes(self, prepared: PreparedInput) -> np.ndarray:
        W, H = prepared.image.size
        rows, cols = prepared.visual_grid
        ip = self.processor.image_processor
        if self.model_type in PATCH_GRID_TYPES:
            resized_w, resized_h = _llava_resized_size(ip, W, H)
            cell = self.processor.patch_size
            ph, pw = prepared.inputs["pixel_values"].shape[-2:]
            off_x, off_y = (resized_w - int(pw)) / 2, (resized_h - int(ph)) / 2  # centre crop, if any
        else:
            cell = ip.patch_size * ip.merge_size
            resized_w, resized_h, off_x, off_y = cols * cell, rows * cell, 0.0, 0.0
        r, c = np.divmod(np.arange(rows * cols), cols)
        boxes = np.stack([off_x + c * cell, off_y + r * cell, off_x + (c + 1) * cell, off_y + (r + 1) * cell], axis=1)
        scale = np.array([W / resized_w, H / resized_h, W / resized_w, H / resized_h])
        return boxes.astype(np.float64) * scale

    # -- generation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prepared: PreparedInput, max_new_tokens: int = 256) -> Trace:
        return self.trace_from_ids(prepared, self.generate_ids(prepared, max_new_tokens))

    @torch.no_grad()
    def generate_ids(self, prepared: PreparedInput, max_new_tokens: int = 256, streamer=None) -> list[int]:
        """Greedy trace token ids (end-of-sequence excluded); ``streamer`` is a transformers streamer."""
        # an image placeholder is never a valid output token (teacher forcing would read it as an image slot)
        out = self.model.generate(**prepared.inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                  suppress_tokens=[self.image_token_id], streamer=streamer)
        ids = out[0, prepared.prompt_length:].tolist()
        for i, t in enumerate(ids):  # the trace ends before the first end-of-sequence token
            if t in self.eos_ids:
                return ids[:i]
        return ids

    def decode(self, ids) -> str:
        ids = list(ids)
        if len(ids) == 1:
            text = self._token_text.get(ids[0])
            if text is None:
                text = self._token_text[ids[0]] = self.tokenizer.decode(ids, skip_special_tokens=True)
            return text
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def trace_from_ids(self, prepared: PreparedInput, ids) -> Trace:
        ids = [int(t) for t in ids]
        text = self.decode(ids)
        return Trace(ids, text, split_spans(ids, self.decode), self.token_logprobs(prepared, ids), answer_from_trace(text))

    # -- teacher forcing -----------------------------------------------------------------------------
    def forward(self, prepared: PreparedInput, trace_ids, image=None, knockout=None, batch: int = 1, **kwargs):
        """One teacher-forced pass over prompt + trace, batched when ``image`` is a list of images or
        ``knockout`` a (B, N) mask: row b sees image[b] and/or has knockout[b] removed. Returns the
        transformers output (``.logits`` over every position)."""
        images = image if isinstance(image, (list, tuple)) else None if image is None else [image]
        if knockout is not None:
            knockout = np.asarray(knockout, dtype=bool)
            knockout = knockout[None] if knockout.ndim == 1 else knockout
            if knockout.shape[1:] != (prepared.n_visual_tokens,):
                raise ValueError(f"knockout mask has shape {knockout.shape}, expected (B, {prepared.n_visual_tokens})")
        batch = max(batch, len(images) if images else 1, len(knockout) if knockout is not None else 1)
        trace = torch.as_tensor(list(trace_ids), dtype=torch.long, device=self.device).reshape(1, -1)
        inputs = {}
        for key, value in prepared.inputs.items():
            if key in _SEQUENCE_KEYS:
                fill = _SEQUENCE_KEYS[key]
                tail = trace if fill is None else torch.full_like(trace, fill)
                value = torch.cat([value, tail.to(value.dtype)], dim=1)
            # every per-image tensor (Llava pixels (1,3,H,W); Qwen patches (n,C), grid (1,3)) repeats along dim 0
            inputs[key] = value.repeat(batch, *[1] * (value.dim() - 1)) if torch.is_tensor(value) else value
        if images:
            pixels = self._pixels_for(prepared, [check_image(im) for im in images])
            inputs.update({k: v.repeat(batch // len(images), *[1] * (v.dim() - 1)) for k, v in pixels.items()})
        if knockout is not None:
            if self.model_type in MERGED_GRID_TYPES:
                # M-RoPE positions are derived from the attention mask: fix them from the full mask first,
                # so knocking tokens out removes them from attention without shifting anyone's position.
                inputs["position_ids"] = self._rope_positions(inputs)
            mask = inputs["attention_mask"].clone()
            rows, cols = np.nonzero(knockout if len(knockout) == batch else np.repeat(knockout, batch, 0))
            mask[torch.as_tensor(rows), torch.as_tensor(prepared.visual_positions[cols])] = 0
            inputs["attention_mask"] = mask
        return self.model(**inputs, use_cache=False, **kwargs)

    def _pixels_for(self, prepared: PreparedInput, images: list) -> dict:
        for im in images:
            if im.size != prepared.image.size:
                raise ValueError(f"ablated image is {im.size}, the prepared one {prepared.image.size}: they must match")
        pix = self.processor.image_processor(images=images, return_tensors="pt")
        return {k: v.to(self.device) for k, v in pix.items() if k in prepared.inputs}

    def _rope_positions(self, inputs) -> torch.Tensor:
        get_rope_index = self.model.model.get_rope_index
        accepted = inspect.signature(get_rope_index).parameters
        position_ids, _ = get_rope_index(**{k: v for k, v in inputs.items() if k in accepted})
        return position_ids

    @torch.no_grad()
    def token_logprobs(self, prepared, trace_ids, image=None, knockout=None, max_batch: int = 16) -> np.ndarray:
        """(T,) log-probs; (B, T) when ``image`` is a list or ``knockout`` is (B, N), run in chunks of
        ``max_batch`` rows so that a big model does not run out of memory."""
        trace_ids = list(trace_ids)
        images = image if isinstance(image, (list, tuple)) else None
        masks = np.asarray(knockout, dtype=bool) if knockout is not None and np.ndim(knockout) == 2 else None
        if images is None and masks is None:
            return self._logprobs(prepared, trace_ids, image, knockout)[0]
        if images is not None and masks is not None and len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} knockout masks")
        n = len(images) if images is not None else len(masks)
        rows = [self._logprobs(prepared, trace_ids,
                               images[i:i + max_batch] if images is not None else image,
                               masks[i:i + max_batch] if masks is not None else knockout)
                for i in range(0, n, max_batch)]
        return np.concatenate(rows) if rows else np.zeros((0, len(trace_ids)))

    def _logprobs(self, prepared, trace_ids, image, knockout) -> np.ndarray:
        if not trace_ids:
            return np.zeros((len(image) if isinstance(image, (list, tuple)) else 1, 0))
        logits = self.forward(prepared, trace_ids, image, knockout).logits
        P = prepared.prompt_length
        # logits at position P-1+t predict trace token t
        logp = torch.log_softmax(logits[:, P - 1:P - 1 + len(trace_ids)].float(), dim=-1)
        target = torch.as_tensor(trace_ids, device=logp.device).expand(logp.shape[0], -1).unsqueeze(-1)
        return logp.gather(2, target).squeeze(-1).cpu().numpy().astype(np.float64)

    # -- attention -----------------------------------------------------------------------------------
    @contextmanager
    def _eager_attention(self):
        """Attention weights need the eager kernel; switch only for the call, not for everyone."""
        previous = self.model.config._attn_implementation
        if previous != "eager":
            self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if previous != "eager":
                self.model.set_attn_implementation(previous)
                self._install_capture_backend()  # the call above reset the decoder too

    @contextmanager
    def capture_visual_attention(self, prepared, options: CaptureOptions | None = None):
        """While active, every forward of this model records each decoder query row at position ≥
        ``options.first_row`` (default P-1: the row that predicts trace token 0) with its log-sum-exp, and the
        visual keys once, and what else ``options`` asks for (`CaptureOptions`; see models/capture). Rows stay
        on the model's accelerator, and are read there, unless ``options.on_device`` says otherwise. Yields
        the capture."""
        options = options or CaptureOptions()
        decoder = self.decoder
        layer_of = {id(layer.self_attn): i for i, layer in enumerate(decoder.layers)}
        with self._weights_on_hand(decoder.layers if options.value_norms else []):
            grams = [o_proj_gram(layer.self_attn, self.num_heads) for layer in decoder.layers] \
                if options.value_norms else None
        capture = VisualAttentionCapture(
            layer_of, prepared.visual_positions,
            prepared.prompt_length - 1 if options.first_row is None else options.first_row, grams,
            self.logit_readout(heads=options.heads) if options.logit_readout else None,
            self._on_accelerator if options.on_device is None else options.on_device, options.heads,
            self._final_norm_eps() if options.norm_scale else None)
        # the final norm's input, for each row's 1/rms: a hook for the call only (a reference kept per forward),
        # which records only this capture's forwards — other threads' go through the same shared module
        hook = decoder.norm.register_forward_pre_hook(final_norm_hook(capture)) if options.norm_scale else None
        try:
            with self._capture_kernel(), activate(capture):
                yield capture
        finally:
            if hook is not None:
                hook.remove()
            capture.flush()  # rows recorded before an error are kept too

    @contextmanager
    def _capture_kernel(self):
        """The decoder (the vision tower keeps its kernel) on the capture backend while any capture is open on
        this model, in any thread: the first capture switches it (where it is not on the backend from load),
        the last one switches it back. Per capture, overlapping streams on one model undid each other's
        switch: the first to end put the old kernel back under the others' generation, which recorded no
        more rows. A forward with no capture active in its thread runs plain sdpa on the backend."""
        decoder = self.decoder
        with self._capture_lock:
            if self._captures_open == 0:
                self._kernel_before_captures = decoder.config._attn_implementation
                if self._kernel_before_captures != CAPTURE_BACKEND:
                    decoder.set_attn_implementation(CAPTURE_BACKEND)
            self._captures_open += 1
        try:
            yield
        finally:
            with self._capture_lock:
                self._captures_open -= 1
                if self._captures_open == 0 and self._kernel_before_captures != CAPTURE_BACKEND:
                    decoder.set_attn_implementation(self._kernel_before_captures)

    def _final_norm_eps(self) -> float:
        """The epsilon of the decoder's final RMSNorm (x·γ/sqrt(mean(x²) + eps)), which direct-logit
        features divide by; other norms (LayerNorm centres x first) are not supported."""
        norm = getattr(self.decoder, "norm", None)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        if norm is None or "RMSNorm" not in type(norm).__name__ or eps is None:
            raise ValueError(f"direct-logit features need the decoder's final RMSNorm; {type(norm).__name__} is not one "
                             "(use an estimator trained with --features logit-weighted)")
        return float(eps)

    def logit_readout(self, on_device: bool | None = None, heads=None) -> LogitReadout:
        """What logit-weighted features read the visual values with: each token's unembedding row times the
        final norm's gain (RMSNorm-style γ·x/rms(x); a norm without a weight counts as gain 1) through every
        layer's o_proj. On the CPU from float32 numpy views of the weights (torch ops in the streaming worker
        would start a second OpenMP pool); on an accelerator on the model's device, in the weights' dtype,
        as (m, L·H·d) float32 tensors there (a capture on the host copies just those rows over). The model's
        own readout (and the head directions it keeps) is built once; ``on_device`` other than the default
        for the model's device builds a separate one (tests compare the two paths on the CPU). ``heads``
        (layer-major indices): directions of those heads only, (m, F·d) in their order — a new token then
        costs hidden·F·d multiply-adds instead of L·hidden²; one readout per head set, kept like the other."""
        heads = None if heads is None else tuple(int(h) for h in heads)
        if on_device is not None and on_device != self._on_accelerator:
            return self._build_logit_readout(on_device, heads)
        if heads is not None:
            if heads not in self._head_readouts:
                self._head_readouts[heads] = self._build_logit_readout(self._on_accelerator, heads)
            return self._head_readouts[heads]
        if self._readout is None:
            self._readout = self._build_logit_readout(self._on_accelerator)
        return self._readout

    @torch.no_grad()
    def _build_logit_readout(self, on_device: bool, heads: tuple | None = None) -> LogitReadout:
        decoder = self.decoder
        with self._weights_on_hand([*decoder.layers, decoder.norm, self.model.get_output_embeddings()]):
            return self._logit_readout_from_weights(decoder, on_device, heads)

    def _logit_readout_from_weights(self, decoder, on_device: bool, heads: tuple | None) -> LogitReadout:
        for layer in decoder.layers:
            if getattr(layer.self_attn, "o_proj", None) is None:
                raise ValueError(f"logit-weighted features need the attention output projection `o_proj`; "
                                 f"{type(layer.self_attn).__name__} has none")
        o_projs = [layer.self_attn.o_proj.weight for layer in decoder.layers]  # (hidden, H·d) each
        table = self.model.get_output_embeddings().weight  # (vocab, hidden)
        gain = getattr(getattr(decoder, "norm", None), "weight", None)
        if heads is not None:  # the heads' columns only, in their order: one (hidden, F·d) matrix
            if min(heads) < 0 or max(heads) >= self.num_layers * self.num_heads:
                raise ValueError(f"heads {list(heads)} outside the model's {self.num_layers}×{self.num_heads}")
            d = o_projs[0].shape[1] // self.num_heads
            blocks = [o_projs[h // self.num_heads][:, (h % self.num_heads) * d:(h % self.num_heads + 1) * d] for h in heads]
            o_projs = [torch.cat(blocks, dim=1)]  # a copy of F·d columns, never of every o_proj
        if on_device:
            @torch.no_grad()
            def directions(ids):
                u = table[torch.as_tensor(ids, device=table.device)].float()
                u = u if gain is None else u * gain.to(u.device).float()
                # layers placed on other devices (device_map): each product where its weights are
                return torch.cat([(u.to(w.device, w.dtype) @ w).to(u.device) for w in o_projs], dim=1).float()
        else:
            w_o = np.concatenate([to_numpy(w) for w in o_projs], axis=1)  # (hidden, L·H·d), layer-major
            table_np, gain_np = to_numpy(table), None if gain is None else to_numpy(gain)
            if getattr(self.model, "hf_device_map", None):  # offloaded weights go back to meta after the block
                table_np, gain_np = table_np.copy(), None if gain_np is None else gain_np.copy()

            def directions(ids):
                return (table_np[ids] if gain_np is None else table_np[ids] * gain_np) @ w_o
        return LogitReadout(directions)

    @torch.no_grad()
    def visual_value_norms(self, prepared) -> np.ndarray:
        """(L, H, N) ‖W_O^h v_n‖ of every decoder head and visual token, from one pass over the prompt."""
        with self.capture_visual_attention(prepared, CaptureOptions(value_norms=True)) as capture:
            self.forward(prepared, [])
        return capture.value_norms

    def _attentions(self, prepared, trace_ids):
        with self._eager_attention():
            return self.forward(prepared, list(trace_ids), output_attentions=True).attentions

    @torch.no_grad()
    def attention_to_visual(self, prepared, trace_ids, eager: bool = False) -> np.ndarray:
        """(L, H, T, N). Row t is the attention of the query that *predicts* trace token t (position
        P-1+t): the attention that produced y_t, available the moment y_t is generated. Captured with the
        fast backend (models/capture); ``eager=True`` reads it off the eager kernel instead (the
        reference the capture is tested against)."""
        trace_ids = list(trace_ids)
        P, T = prepared.prompt_length, len(trace_ids)
        if not eager:
            with self.capture_visual_attention(prepared) as capture:
                self.forward(prepared, trace_ids)
            return capture.attention(T)
        vis = torch.as_tensor(prepared.visual_positions, device=self.device)
        stacked = torch.stack([a[0, :, P - 1:P - 1 + T][:, :, vis] for a in self._attentions(prepared, trace_ids)])
        return stacked.float().cpu().numpy()

    @torch.no_grad()
    def attention_matrices(self, prepared, trace_ids) -> np.ndarray:
        """(L, H, S, S) full decoder attention over prompt + trace (for rollout-style methods)."""
        return torch.stack([a[0] for a in self._attentions(prepared, trace_ids)]).float().cpu().numpy()

    @torch.no_grad()
    def position_logits(self, prepared, trace_ids, classes) -> np.ndarray:
        """(S, C) logits of ``classes`` at every position: the decoder's output (after its final norm) times
        those rows of the output head, so a big vocabulary's (S, V) logits are never built."""
        captured = []
        handle = self.decoder.register_forward_hook(_this_thread_only(lambda module, args, out: captured.append(out[0])))
        try:
            self.forward(prepared, list(trace_ids), logits_to_keep=1)
        finally:
            handle.remove()
        head = self.model.get_output_embeddings()
        rows = torch.as_tensor(list(classes), dtype=torch.long, device=self.device)
        logits = captured[0][0] @ head.weight[rows].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[rows]
        return logits.float().cpu().numpy().astype(np.float64)

    # -- visual embeddings ---------------------------------------------------------------------------
    @contextmanager
    def _visual_rows_hook(self, prepared, replace=None, capture=None):
        """Hook the decoder's input: read (capture) or overwrite (replace) the rows of the visual tokens.
        The model's own forward still builds positions, masks and everything else."""
        positions = torch.as_tensor(prepared.visual_positions, device=self.device)

        def hook(module, args, kwargs):
            embeds = kwargs["inputs_embeds"]
            if capture is not None:
                capture.append(embeds[0, positions])
            if replace is not None:  # (B, N, D) onto a batch of B identical rows
                embeds = embeds.clone()
                embeds[:, positions] = replace.to(embeds.device, embeds.dtype)
                kwargs["inputs_embeds"] = embeds
            return args, kwargs

        handle = self.model.model.language_model.register_forward_pre_hook(_this_thread_only(hook), with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def visual_features(self, prepared) -> np.ndarray:
        """(N, D) the visual-token embeddings the decoder receives, in visual-token order."""
        captured = []
        with self._visual_rows_hook(prepared, capture=captured):
            self.forward(prepared, [])
        return captured[0].float().cpu().numpy()

    def logprobs_from_visual_embeddings(self, prepared, trace_ids, visual_embeds: torch.Tensor) -> torch.Tensor:
        """Differentiable (B, T) trace log-probs with the visual-token embeddings replaced by
        ``visual_embeds`` (B, N, D) — the input gradient methods attribute to. (Qwen3-VL also feeds
        deepstack features to deeper layers; those stay the real image's.)"""
        P, T = prepared.prompt_length, len(list(trace_ids))
        with self._visual_rows_hook(prepared, replace=visual_embeds):
            logits = self.forward(prepared, trace_ids, batch=len(visual_embeds)).logits[:, P - 1:P - 1 + T]
        target = torch.as_tensor(list(trace_ids), device=self.device).expand(len(visual_embeds), -1).unsqueeze(-1)
        return torch.log_softmax(logits.float(), -1).gather(2, target).squeeze(-1)


def _this_thread_only(hook):
    """A module hook that acts only on forwards run in the thread that made it (else returns None: no change).
    The model is shared by threads (the live demo's sessions) and a module's hooks fire for all of their
    forwards: unscoped, one visitor's region hook read another's decode step at its visual positions
    (IndexError: index 34 is out of bounds for dimension 0 with size 1) or took another image's features."""
    owner = threading.get_ident()

    def scoped(*args):
        return hook(*args) if threading.get_ident() == owner else None
    return scoped


def image_only_processor(processor_cls):
    """`processor_cls` without its video processor.

    Qwen-VL and GLM-4.1V processors insist on a video processor, and those need torchvision, which has
    no CPU build here. Images are all this package feeds them, so drop the attribute: ProcessorMixin
    takes its attribute list from ``__init__``'s signature.
    """
    class ImageOnlyProcessor(processor_cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnlyProcessor.__name__ = processor_cls.__name__
    return ImageOnlyProcessor


def load_processor(source: str, model_type: str):
    """AutoProcessor where it works; the image-only processor where the video half cannot load."""
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(source)
    except (AttributeError, ImportError, OSError):
        if model_type not in MERGED_GRID_TYPES:
            raise
    cls = getattr(transformers, _PROCESSOR_CLASSES[model_type])
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    image_processor = transformers.AutoImageProcessor.from_pretrained(source)
    return image_only_processor(cls)(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=_saved_chat_template(source) or tokenizer.chat_template)


def _saved_chat_template(source: str) -> str | None:
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        if path:
            text = open(path, encoding="utf-8").read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


_PROCESSOR_CLASSES = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                      "qwen3_vl": "Qwen3VLProcessor", "glm4v": "Glm4vProcessor"}


def _llava_resized_size(image_processor, W: int, H: int) -> tuple[float, float]:
    """Size the image has after the processor's resize, before any centre crop."""
    size = image_processor.size
    if not getattr(image_processor, "do_resize", True):
        return float(W), float(H)
    if "height" in size and "width" in size:
        return float(size["width"]), float(size["height"])
    short = size["shortest_edge"]
    if W <= H:
        return float(short), float(int(short * H / W))
    return float(int(short * W / H)), float(short)
