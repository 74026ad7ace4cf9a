"""The paper's baselines: AttnLRP (relevance conservation, the rules leave the forward alone, every
architecture) and TAM (its filter, its interference removal and the whole map on constructed cases)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fake_model import one_token_per_region
from tiny_archs import ARCHS, build
from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.methods import AttributionContext, load_method
from vattr_bench.methods.attnlrp import AttnLRPMethod, attnlrp_rules, softmax_absorption
from vattr_bench.methods.tam import TAMMethod, rank_gaussian_filter, remove_interference, token_activation_maps
from vattr_bench.regions import make_regions
from vattr_bench.types import Span, Trace


@pytest.fixture(scope="module")
def tiny_case(tiny):
    s = synthetic_sample("general", 0, "test", 0)
    prepared = tiny.prepare(s.image, s.prompt)
    return s, prepared, tiny.generate(prepared, max_new_tokens=24)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return build(request.param)


def _relevance_budget(model, prepared, trace_ids, epsilon, eager=True):
    """Under the rules, one backward of the trace's summed log-prob. Returns (relevance of every decoder
    input embedding summed, what the softmax rules kept, the explained value Σ_t z_{t,y_t} − Σ_k p_{t,k} z_{t,k},
    the visual tokens' relevance)."""
    inputs = []

    def leaf_inputs(module, args, kwargs):  # every input embedding, text and visual, as a leaf to read
        kwargs["inputs_embeds"] = kwargs["inputs_embeds"].detach().requires_grad_(True)
        inputs.append(kwargs["inputs_embeds"])
        return args, kwargs

    handle = model.decoder.register_forward_pre_hook(leaf_inputs, with_kwargs=True)
    P, T = prepared.prompt_length, len(trace_ids)
    try:
        with attnlrp_rules(model, epsilon, eager=eager), softmax_absorption() as probes, torch.enable_grad():
            logits = model.forward(prepared, trace_ids).logits[0, P - 1:P - 1 + T].float()
            logp = torch.log_softmax(logits, -1)
            rows, target = torch.arange(T), torch.as_tensor(trace_ids)
            logp[rows, target].sum().backward()
            explained = float((logits[rows, target] - (logp.exp() * logits).sum(-1)).sum().detach())
    finally:
        handle.remove()
    per_token = (inputs[0] * inputs[0].grad)[0].sum(-1).detach()
    return float(per_token.sum()), sum(p.absorbed for p in probes), explained, per_token[prepared.visual_positions]


@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_attnlrp_conserves_relevance_on_vattr_tiny(tiny, tiny_case, epsilon):
    """Target: the trace's summed log-prob. Its gradient at the logits is onehot(y) − p, so the relevance
    entering the network is Σ_t (z_y − Σ_k p_k z_k); vattr-tiny's decoder has no biases, so all of it must
    reach the input embeddings except what each softmax rule keeps (its dropped bias term, read per layer)
    and the ε terms. The trace is the greedy one shifted by three tokens, so that its log-probs are far from 0:
    on the greedy trace p_y ≈ 1 and z_y − Σ p z is a difference of near-equal float32 logits (~1e-2 of
    rounding). Tolerance 1e-4 relative; measured 1e-7 at ε = 0 and 2e-6 at ε = 1e-6."""
    _, prepared, trace = tiny_case
    unlikely = list(np.roll(trace.token_ids, 3))
    relevance, softmax_kept, explained, _ = _relevance_budget(tiny, prepared, unlikely, epsilon)
    assert relevance + softmax_kept == pytest.approx(explained, rel=1e-4)
    assert abs(softmax_kept) > 1e-3 * abs(explained)  # the accounting matters: the softmax rule is not conservative


def test_attnlrp_sdpa_and_explicit_softmax_agree_and_the_forward_is_unchanged(tiny, tiny_case):
    _, prepared, trace = tiny_case
    fused = _relevance_budget(tiny, prepared, trace.token_ids, 1e-6, eager=False)[3]
    explicit = _relevance_budget(tiny, prepared, trace.token_ids, 1e-6, eager=True)[3]
    assert torch.allclose(fused, explicit, rtol=1e-3, atol=1e-6 * float(explicit.abs().max()))
    backend, before = tiny.decoder.config._attn_implementation, tiny.token_logprobs(prepared, trace.token_ids)
    with attnlrp_rules(tiny):  # the rules change the backward only
        np.testing.assert_allclose(tiny.token_logprobs(prepared, trace.token_ids), before, atol=1e-5)
    np.testing.assert_array_equal(tiny.token_logprobs(prepared, trace.token_ids), before)
    assert tiny.decoder.config._attn_implementation == backend
    assert not any("forward" in vars(m) for m in tiny.decoder.modules())  # every patched norm restored


def test_attnlrp_method_sums_the_visual_relevance_per_region(tiny, tiny_case):
    s, prepared, trace = tiny_case
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16, sample=s)
    whole = Trace(trace.token_ids, trace.text, [Span(0, len(trace.token_ids), trace.text)], trace.logprobs, "")
    scores = AttnLRPMethod().attribute(AttributionContext(tiny, s, prepared, whole, regions))
    visual = _relevance_budget(tiny, prepared, trace.token_ids, AttnLRPMethod.epsilon, eager=False)[3].numpy()
    np.testing.assert_allclose(scores[0], regions.token_matrix.astype(float) @ visual, rtol=1e-3,
                               atol=1e-6 * np.abs(visual).sum())


def test_attnlrp_and_tam_run_on_every_architecture(arch_model):
    """Conservation too where every input is an embedding (Qwen3-VL also adds deepstack features at deeper
    layers, constants here that keep some relevance: shapes and finiteness only)."""
    image = synthetic_sample("general", 0, "test", 0).image.resize((96, 64))
    prepared = arch_model.prepare(image, "what color is the circle ?")
    ids = arch_model.tokenizer.convert_tokens_to_ids("the circle is red . 2".split())
    if arch_model.model_type != "qwen3_vl":
        relevance, softmax_kept, explained, _ = _relevance_budget(arch_model, prepared, ids, 0.0)
        assert relevance + softmax_kept == pytest.approx(explained, rel=1e-3)
    trace = Trace(ids, "", [Span(0, 3, "a"), Span(3, len(ids), "b")], np.zeros(len(ids)), "")
    ctx = AttributionContext(arch_model, SimpleNamespace(id="x"), prepared, trace, one_token_per_region(prepared.n_visual_tokens))
    for name in ("attnlrp", "tam"):
        scores = load_method(name).attribute(ctx)
        assert scores.shape == (2, prepared.n_visual_tokens) and np.isfinite(scores).all() and np.abs(scores).sum() > 0


def test_attnlrp_refuses_a_decoder_it_has_no_rule_for():
    decoder = nn.Module()
    decoder.layers = nn.ModuleList([nn.LayerNorm(4)])
    hf = SimpleNamespace(model=SimpleNamespace(language_model=decoder), get_output_embeddings=lambda: nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"attnlrp cannot explain model 'odd'.*LayerNorm"):
        with attnlrp_rules(SimpleNamespace(model=hf, name="odd")):
            pass


def test_position_logits_are_the_models_own_logits(tiny, tiny_case):
    _, prepared, trace = tiny_case
    P, T, ids = prepared.prompt_length, len(trace.token_ids), trace.token_ids
    logits = tiny.position_logits(prepared, ids, [int(c) for c in sorted(set(ids))])
    column = {c: i for i, c in enumerate(sorted(set(ids)))}
    picked = logits[np.arange(P - 1, P - 1 + T), [column[t] for t in ids]]
    own = tiny.forward(prepared, ids).logits[0].float().detach().numpy()  # (S, V), all positions
    np.testing.assert_allclose(picked, own[np.arange(P - 1, P - 1 + T), ids], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[:P, column[ids[0]]], own[:P, ids[0]], rtol=1e-4, atol=1e-4)  # visual rows too
    assert logits.shape == (P + T, len(column))


# -- TAM -------------------------------------------------------------------------------------------------
def test_rank_gaussian_filter_keeps_flat_maps_and_outvotes_a_spike():
    flat = np.full((4, 5), 0.3)
    np.testing.assert_allclose(rank_gaussian_filter(flat), flat)
    assert not rank_gaussian_filter(np.zeros((3, 3))).any()
    spiky = flat.copy()
    spiky[2, 2] = 5.0
    filtered = rank_gaussian_filter(spiky)
    assert filtered[2, 2] < 0.6 and np.all(filtered < 1.0)  # one high value among eight low ones: the ranks vote it down
    np.testing.assert_allclose(rank_gaussian_filter(spiky, kernel_size=1), spiky)  # a 1×1 window is the identity
    # one window by hand: sorted values 0,…,0,1,2 (mean 1/3, std √(5/9 − 1/9)), weights over ranks −4…4
    window = np.zeros((3, 3))
    window[0, 0], window[0, 1] = 1.0, 2.0
    sigma = np.sqrt(5 / 9 - 1 / 9) / (1 / 3)
    kernel = np.exp(-np.arange(-4, 5) ** 2 / (2 * sigma ** 2))
    assert rank_gaussian_filter(window)[1, 1] == pytest.approx((np.r_[np.zeros(7), 1.0, 2.0] * kernel).sum() / kernel.sum())
    with pytest.raises(ValueError, match="odd"):
        rank_gaussian_filter(flat, kernel_size=2)


def test_interference_removal_recovers_the_tokens_own_map():
    own = np.array([0.0, 0.0, 1.0, 2.0, 0.0, 0.0])  # the token's evidence
    plate = np.array([3.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # an earlier word's map, leaking in at 0.7
    other = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # an earlier word that does not activate this class
    recovered = remove_interference(own + 0.7 * plate, np.stack([plate, other]), np.array([2.0, 0.0]))
    np.testing.assert_allclose(recovered, own, atol=1e-12)
    np.testing.assert_array_equal(remove_interference(own, np.zeros((0, 6)), np.zeros(0)), own)


def _plate_and_fork(interference: float, plate_activates_fork: float):
    """Prompt: 16 visual tokens (4×4 grid) then the word PLATE; trace: FORK. The fork's visual logits are its
    own map (top-right 2×2) plus `interference` × the plate's map (bottom-left 2×2)."""
    PLATE, FORK, IMG = 7, 9, 1
    sequence = np.array([IMG] * 16 + [PLATE, FORK])
    plate_map, fork_map = np.zeros((4, 4)), np.zeros((4, 4))
    plate_map[2:, :2], fork_map[:2, 2:] = 2.0, 1.0
    logits = np.zeros((18, 2))  # columns: the sorted text ids, PLATE then FORK
    logits[:16, 0] = plate_map.ravel()
    logits[:16, 1] = fork_map.ravel() + interference * plate_map.ravel()
    logits[16, 1] = plate_activates_fork  # the plate's position points at FORK
    return logits, sequence, fork_map


def test_tam_removes_an_earlier_words_activation():
    logits, sequence, fork_map = _plate_and_fork(0.5, 3.0)
    raw = token_activation_maps(logits, sequence, np.arange(16), 17, (4, 4), kernel_size=1)
    np.testing.assert_allclose(raw[0], fork_map.ravel() / 3.0)  # min-max scaled together with the text weight 3
    leaked = token_activation_maps(*_plate_and_fork(0.5, 0.0)[:2], np.arange(16), 17, (4, 4), kernel_size=1)
    assert leaked[0].reshape(4, 4)[2:, :2].min() > 0  # no weight on the plate: its map stays in
    filtered = token_activation_maps(logits, sequence, np.arange(16), 17, (4, 4))[0].reshape(4, 4)
    assert filtered[:2, 2:].min() > filtered[2:, :2].max()  # after the filter the fork's quadrant still leads


def test_tam_method_reads_the_adapters_logits():
    logits, sequence, _ = _plate_and_fork(0.5, 3.0)
    model = SimpleNamespace(position_logits=lambda prepared, trace_ids, classes: logits if list(classes) == [7, 9] else None)
    prepared = SimpleNamespace(inputs={"input_ids": torch.as_tensor(sequence[None, :17])}, visual_positions=np.arange(16),
                               visual_grid=(4, 4), prompt_length=17)
    trace = Trace([9], "fork", [Span(0, 1, "fork")], np.zeros(1), "")
    ctx = AttributionContext(model, SimpleNamespace(id="x"), prepared, trace, one_token_per_region(16))
    scores = TAMMethod().attribute(ctx).reshape(4, 4)
    assert scores[:2, 2:].min() > scores[2:, :2].max() and scores[:2, 2:].min() > scores[:2, :2].max()
