"""AttnLRP (Achtibat et al., ICML 2024): layer-wise relevance propagation through the decoder, as a
modified backward pass.

LRP sends the explained output back layer by layer, each layer passing on exactly the relevance it
received (conservation), split by a rule chosen for the layer. Every AttnLRP rule can be written as
gradient × input in a network whose backward pass is changed in a few places, so one ordinary
``autograd`` backward per span gives the relevance of each input (``relevance = input · modified
gradient``). Inside `attnlrp_rules` the decoder runs with:

- RMSNorm, identity rule: the 1/rms factor is treated as a constant (its gradient is cut), so the norm
  is a per-token linear map and passes relevance on unchanged;
- elementwise activations (the MLP's gate nonlinearity), identity rule: the backward multiplies by
  act(x)/x instead of act'(x), so input · gradient equals output · gradient;
- bilinear products, uniform rule: each factor of q·kᵀ, of attention·V and of the gated MLP's gate·up
  gets half of the product's relevance (gradient halved on each factor; q and k sit behind two products,
  so theirs is quartered);
- softmax, the paper's rule R_i = x_i (R̃_i − s_i Σ_j R̃_j): this *is* plain gradient × input at the
  softmax input, so the exact softmax backward is kept (any attention kernel serves);
- linear layers, ε-rule: each output's gradient is scaled by z/(z + ε·sign z); biases keep what they
  absorb.

What is conserved: the gradient of the span's summed log-prob at the logits is (onehot(y) − p) per
token, so with p held constant the relevance entering the network is Σ_t (z_{t,y_t} − Σ_k p_{t,k} z_{t,k}),
each token's target logit against the probability-weighted mean logit (the first-order change of the
log-prob). From there to the input embeddings relevance is conserved except for what biases, the ε
terms and the softmax rule's own bias term absorb (the rule drops a term of the Taylor expansion, as
the paper says); tests/test_paper_baselines.py accounts for each.

The `lxt` package (the authors' implementation) was tried first: lxt 2.1 does not import beside
transformers 5 (it imports helpers transformers removed) and its patches target the classes of plain
Llama / Qwen2 / Qwen3 / Gemma3, not the decoders inside Llava, Qwen2.5-VL, Qwen3-VL or GLM-4.1V. The
rules here patch module *instances* of the model at hand, for the duration of the call only.
"""
from __future__ import annotations

import types
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .base import AttributionContext, AttributionMethod

ATTNLRP_BACKEND = "vattr_attnlrp"
ATTNLRP_EAGER_BACKEND = "vattr_attnlrp_eager"  # explicit softmax: lets a probe read what the softmax rule absorbs
DEFAULT_EPSILON = 1e-6


# -- backward modifications (forward: identity or the original function) -----------------------------
class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by a constant (the uniform rule's ½)."""

    @staticmethod
    def forward(ctx, x, factor: float):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class _EpsilonRule(torch.autograd.Function):
    """Identity forward on a linear layer's output z; backward scales by z / (z + ε·sign z)."""

    @staticmethod
    def forward(ctx, z, epsilon: float):
        ctx.save_for_backward(z)
        ctx.epsilon = epsilon
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        return grad * z / (z + ctx.epsilon * sign), None


class _IdentityRule(torch.autograd.Function):
    """y = act(x) forward; backward multiplies by act(x)/x, so x·grad_x = y·grad_y (relevance passes
    unchanged). Where x = 0 the input has no relevance to pass (x·anything = 0): the factor is 0 there."""

    @staticmethod
    def forward(ctx, x, act):
        y = act(x)
        ctx.save_for_backward(torch.where(x == 0, torch.zeros_like(y), y / torch.where(x == 0, torch.ones_like(x), x)))
        return y

    @staticmethod
    def backward(ctx, grad):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _ScaleGradient.apply(x, factor)


class _IdentityRuleActivation(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return _IdentityRule.apply(x, self.act)


def _rmsnorm_identity_rule(self, hidden_states):
    """RMSNorm with 1/rms held constant in the backward (the identity rule)."""
    dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    inv_rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _norm_eps(self)).detach()
    return self.weight * (x * inv_rms).to(dtype)


def _norm_eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", None)))


# -- attention: the uniform rule on q·kᵀ and attention·V; the softmax rule is its exact backward -------
def _split_relevance(query, key, value):
    # q and k: ½ (q·kᵀ) of the ½ that the attention weights get of attention·V; V: ½ of attention·V
    return scale_gradient(query, 0.25), scale_gradient(key, 0.25), scale_gradient(value, 0.5)


def attnlrp_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa with the AttnLRP gradient split (an AttentionInterface backend)."""
    return sdpa_attention_forward(module, *_split_relevance(query, key, value), attention_mask, **kwargs)


# set by a test to read, per layer, the relevance the softmax rule keeps (see `softmax_absorption`)
_softmax_probe: list | None = None


def attnlrp_attention_eager(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """The same rules with the softmax written out (O(S²) memory: for checks, not for long traces)."""
    query, key, value = _split_relevance(query, key, value)
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if _softmax_probe is not None and scores.requires_grad:
        _softmax_probe.append(_SoftmaxProbe(scores, weights))
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


class _SoftmaxProbe:
    """What one attention call's softmax rule keeps: the attention weights get ½ of attention·V's relevance,
    ½ Σ s·∂/∂s, and pass ½ Σ x·∂/∂x on to q and k (the ½ sits on q, k and V, not on s and x)."""

    def __init__(self, scores, weights):
        self.into = self.out_of = None
        finite = torch.isfinite(scores) & (scores > torch.finfo(scores.dtype).min / 2)  # masked logits carry none
        weights.register_hook(lambda g: setattr(self, "into", float((weights.detach() * g).sum())))
        scores.register_hook(lambda g: setattr(self, "out_of", float((scores.detach() * g)[finite].sum())))

    @property
    def absorbed(self) -> float:
        return 0.5 * (self.into - self.out_of)


AttentionInterface.register(ATTNLRP_BACKEND, attnlrp_attention)
AttentionMaskInterface.register(ATTNLRP_BACKEND, sdpa_mask)
AttentionInterface.register(ATTNLRP_EAGER_BACKEND, attnlrp_attention_eager)
AttentionMaskInterface.register(ATTNLRP_EAGER_BACKEND, eager_mask)


# -- patching a model for the duration of a call -------------------------------------------------------
def _decoder_and_head(model) -> tuple[nn.Module, nn.Module]:
    hf = getattr(model, "model", None)
    decoder = getattr(getattr(hf, "model", None), "language_model", None)
    head = hf.get_output_embeddings() if hf is not None else None
    if decoder is None or head is None:
        raise ValueError(f"attnlrp needs a Hugging Face VLM adapter (model.model.model.language_model and an output "
                         f"embedding); {getattr(model, 'name', type(model).__name__)!r} has none")
    return decoder, head


def _unsupported(model_name: str, what: str) -> ValueError:
    return ValueError(f"attnlrp cannot explain model {model_name!r}: {what}. Its rules cover RMSNorm, gated "
                      "MLPs (gate_proj/up_proj/act_fn or gate_up_proj/activation_fn) and attention run through "
                      "transformers' attention interface (Llama, Qwen2.5-VL, Qwen3-VL, GLM-4.1V decoders)")


@contextmanager
def attnlrp_rules(model, epsilon: float = DEFAULT_EPSILON, eager: bool = False):
    """While active, gradient × input of any output of ``model`` (an HFVisionLanguageModel) with respect to
    the decoder's input embeddings is its AttnLRP relevance. Patches instances, restores them on exit;
    refuses (ValueError naming the module) a decoder with a layer the rules do not cover. ``eager``: the
    softmax written out (for checks)."""
    name = getattr(model, "name", type(model).__name__)
    decoder, head = _decoder_and_head(model)
    mlps, norms = [], []
    for path, module in decoder.named_modules():
        kind = type(module).__name__
        if kind.endswith("RMSNorm"):
            if getattr(module, "weight", None) is None or getattr(module, "variance_epsilon", getattr(module, "eps", None)) is None:
                raise _unsupported(name, f"{path} ({kind}) has no weight or epsilon")
            norms.append((path, module))
        elif "Norm" in kind:
            raise _unsupported(name, f"{path} is a {kind}, not an RMSNorm")
        elif kind.endswith("MLP"):
            if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "act_fn")):
                mlps.append((module, "act_fn", (module.gate_proj, module.up_proj)))
            elif all(hasattr(module, a) for a in ("gate_up_proj", "activation_fn")):
                mlps.append((module, "activation_fn", (module.gate_up_proj,)))
            else:
                raise _unsupported(name, f"{path} ({kind}) is not a gated MLP of a known layout")
    if not mlps:
        raise _unsupported(name, "its decoder has no gated MLP")
    _check_rmsnorm_form(name, norms)

    previous_backend = decoder.config._attn_implementation
    with ExitStack() as undo:
        for _, norm in norms:
            norm.forward = types.MethodType(_rmsnorm_identity_rule, norm)
            undo.callback(vars(norm).pop, "forward", None)
        halved = set()
        for mlp, act_name, product_inputs in mlps:
            act = getattr(mlp, act_name)
            setattr(mlp, act_name, _IdentityRuleActivation(act))
            undo.callback(setattr, mlp, act_name, act)
            halved.update(id(m) for m in product_inputs)
        for module in [*decoder.modules(), head]:
            if isinstance(module, nn.Linear):
                factor = 0.5 if id(module) in halved else None
                handle = module.register_forward_hook(
                    lambda m, args, out, factor=factor: _linear_rules(out, epsilon, factor))
                undo.callback(handle.remove)
        decoder.set_attn_implementation(ATTNLRP_EAGER_BACKEND if eager else ATTNLRP_BACKEND)
        undo.callback(decoder.set_attn_implementation, previous_backend)
        yield


def _linear_rules(out, epsilon, factor):
    out = _EpsilonRule.apply(out, epsilon) if epsilon else out
    return out if factor is None else scale_gradient(out, factor)


@torch.no_grad()
def _check_rmsnorm_form(model_name: str, norms) -> None:
    """Each norm must compute weight · x / rms(x) (the form the identity rule is written for): checked on a
    random input, so a variant (a 1 + weight gain, a centred norm) is refused rather than mis-explained."""
    for path, norm in norms:
        x = torch.randn(2, norm.weight.shape[-1], dtype=norm.weight.dtype, device=norm.weight.device)
        if not torch.allclose(norm(x).float(), _rmsnorm_identity_rule(norm, x).float(), rtol=1e-3, atol=1e-3):
            raise _unsupported(model_name, f"{path} ({type(norm).__name__}) does not compute weight·x/rms(x)")


@contextmanager
def softmax_absorption():
    """Collects one probe per attention call under ``attnlrp_rules(..., eager=True)``; after a backward,
    ``sum(p.absorbed for p in probes)`` is the relevance the softmax rule's bias terms kept."""
    global _softmax_probe
    _softmax_probe = probes = []
    try:
        yield probes
    finally:
        _softmax_probe = None


class AttnLRPMethod(AttributionMethod):
    """AttnLRP relevance of each visual-token embedding for the span's summed log-prob (one forward, one
    modified backward per span), summed over each region's tokens."""

    name = "attnlrp"
    epsilon = DEFAULT_EPSILON

    def settings(self) -> dict:
        return {"epsilon": self.epsilon, "target": "span's summed log-prob (relevance of z_y - E_p[z])"}

    def attribute(self, ctx: AttributionContext) -> np.ndarray:
        model, ids = ctx.model, ctx.trace.token_ids
        embeds = torch.as_tensor(model.visual_features(ctx.prepared), device=model.device)
        embeds = embeds.unsqueeze(0).requires_grad_(True)  # (1, N, D)
        token_scores = np.zeros((ctx.n_spans, embeds.shape[1]))
        if not ctx.n_spans:
            return ctx.tokens_to_regions(token_scores)
        with attnlrp_rules(model, self.epsilon), torch.enable_grad():
            logprobs = model.logprobs_from_visual_embeddings(ctx.prepared, ids, embeds)[0]  # (T,)
            for i, span in enumerate(ctx.trace.spans):
                (grad,) = torch.autograd.grad(logprobs[span.start:span.end].sum(), embeds,
                                              retain_graph=i < ctx.n_spans - 1)
                token_scores[i] = (embeds.detach() * grad)[0].sum(-1).float().cpu().numpy()
        return ctx.tokens_to_regions(token_scores)
