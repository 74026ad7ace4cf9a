"""The adapter contract on vattr-tiny (Llava) and on tiny random Qwen2.5-VL, Qwen3-VL and GLM-4.1V."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend

import tiny_archs
from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.models import load_model
from vattr_bench.models.hf import HFVisionLanguageModel

ARCHS = ["vattr-tiny", *tiny_archs.ARCHS]


@pytest.fixture(scope="module", params=ARCHS)
def model(request, tiny) -> HFVisionLanguageModel:
    return tiny if request.param == "vattr-tiny" else tiny_archs.build(request.param)


def _trace(model, text="the circle is red ."):
    return model.tokenizer.convert_tokens_to_ids(text.split())


@pytest.fixture(scope="module")
def image(model):
    img = synthetic_sample("general", 0).image
    # the merged-grid processors keep the aspect ratio: give them a non-square image
    return img if model.model_type == "llava" else img.resize((96, 64))


def test_generation_returns_a_complete_trace(model, image):
    prepared = model.prepare(image, "what color is the circle ?")
    trace = model.generate(prepared, max_new_tokens=12)
    assert 0 < len(trace.token_ids) <= 12
    assert trace.logprobs.shape == (len(trace.token_ids),) and np.all(trace.logprobs <= 0)
    assert model.num_layers >= 2 and model.num_heads >= 4


def test_logprobs_match_a_direct_forward_pass(model, image):
    prepared = model.prepare(image, "what color is the circle ?")
    trace = _trace(model)
    ours = model.token_logprobs(prepared, trace)
    inputs = dict(prepared.inputs)
    full = torch.cat([inputs["input_ids"], torch.tensor([trace])], dim=1)
    inputs["input_ids"] = full
    inputs["attention_mask"] = torch.ones_like(full)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(trace), dtype=torch.long)], 1)
    with torch.no_grad():
        logits = model.model(**inputs).logits[0]
    P = prepared.prompt_length
    direct = [torch.log_softmax(logits[P - 1 + t], -1)[tok].item() for t, tok in enumerate(trace)]
    np.testing.assert_allclose(ours, direct, atol=1e-5)


def _patch_embedding(model):
    if model.model_type == "llava":
        return model.model.model.vision_tower.embeddings.patch_embedding
    return model.model.model.visual.patch_embed


def _patch_rows(out):
    """One row per image patch, in the order the model groups them into visual tokens."""
    out = out.detach()
    return out[0].flatten(1).T if out.dim() == 4 else out  # CLIP conv map (1, C, h, w) | Qwen/GLM (patches, C)


def test_visual_token_map_points_at_the_right_pixels(model, image):
    prepared = model.prepare(image, "what color is the circle ?")
    boxes = model.visual_token_boxes(prepared)
    rows, cols = prepared.visual_grid
    assert boxes.shape == (rows * cols, 4) == (prepared.n_visual_tokens, 4)
    # the boxes tile the whole image exactly once
    area = np.zeros(image.size[::-1])
    for x0, y0, x1, y1 in boxes.round().astype(int):
        area[y0:y1, x0:x1] += 1
    assert np.all(area == 1)
    # paint inside one token's box: only the patch embeddings of that token may change
    captured = []
    hook = _patch_embedding(model).register_forward_hook(lambda m, i, o: captured.append(_patch_rows(o)))
    try:
        k = rows * cols // 2 + 1
        x0, y0, x1, y1 = boxes[k].round().astype(int)
        painted = image.copy()
        painted.paste((255, 0, 255), (x0 + 1, y0 + 1, x1 - 1, y1 - 1))
        model.token_logprobs(prepared, _trace(model, "red"))
        model.token_logprobs(prepared, _trace(model, "red"), image=painted)
    finally:
        hook.remove()
    changed = (captured[0] - captured[1]).abs().sum(-1) > 1e-6
    per_token = len(changed) // (rows * cols)  # patches per visual token (merge², temporal folded in)
    assert changed.nonzero().flatten().div(per_token, rounding_mode="floor").unique().tolist() == [k]


def test_knocking_out_every_visual_token_removes_the_image(model, image):
    prepared = model.prepare(image, "what color is the circle ?")
    trace = _trace(model, "the circle is")
    everything = np.ones(prepared.n_visual_tokens, dtype=bool)
    base = model.token_logprobs(prepared, trace)
    blind = model.token_logprobs(prepared, trace, knockout=everything)
    blind_other_image = model.token_logprobs(prepared, trace, image=Image.new("RGB", image.size, "black"), knockout=everything)
    np.testing.assert_allclose(blind, blind_other_image, atol=1e-6)
    assert np.abs(base - blind).max() > 1e-4
    with pytest.raises(ValueError, match="knockout mask has shape"):
        model.token_logprobs(prepared, trace, knockout=everything[:-1])


def test_knockout_hides_a_region_from_every_later_query(model, image):
    """Knockout's meaning, pinned (regions/ablation.py and README say the same): the knocked tokens are removed
    as attention keys for every later query — the other visual tokens too, not only the text — and nothing
    before them changes (causal), nor does anyone's position."""
    prepared = model.prepare(image, "what color is the circle ?")
    trace = _trace(model, "the circle is")
    n = prepared.n_visual_tokens
    knocked = np.zeros(n, dtype=bool)
    knocked[: n // 2] = True  # the first half of the visual tokens
    with torch.no_grad():
        base = model.forward(prepared, trace, output_hidden_states=True).hidden_states
        ablated = model.forward(prepared, trace, knockout=knocked, output_hidden_states=True).hidden_states
    later_visual = int(prepared.visual_positions[-1])  # a visual token after the knocked ones
    before = int(prepared.visual_positions[0]) - 1  # the last position before any visual token
    assert (base[-1][0, later_visual] - ablated[-1][0, later_visual]).abs().max() > 1e-4  # it no longer reads them
    torch.testing.assert_close(base[-1][0, : before + 1], ablated[-1][0, : before + 1])  # the past is untouched


def test_attention_capture_equals_eager_attention(model, image):
    prepared = model.prepare(image, "what color is the circle ?")
    trace = _trace(model, "the circle is red .")
    decoder = model.model.model.language_model
    before = model.model.config._attn_implementation, decoder.config._attn_implementation
    fast = model.attention_to_visual(prepared, trace)
    eager = model.attention_to_visual(prepared, trace, eager=True)
    assert fast.shape == eager.shape == (model.num_layers, model.num_heads, len(trace), prepared.n_visual_tokens)
    np.testing.assert_allclose(fast, eager, atol=1e-5)
    assert np.all(fast >= 0) and np.all(fast.sum(-1) <= 1 + 1e-5) and fast.sum() > 0.01
    assert (model.model.config._attn_implementation, decoder.config._attn_implementation) == before  # for the call only


def test_an_sdpa_decoder_runs_on_the_capture_backend_from_load(model, image):
    """With no capture active the backend is sdpa itself: the same log-probs to the bit, and captures need
    no switch (the eager switch for attention matrices puts it back too)."""
    from vattr_bench.models.capture import CAPTURE_BACKEND

    decoder = model.model.model.language_model
    assert decoder.config._attn_implementation == CAPTURE_BACKEND
    prepared = model.prepare(image, "what color is the circle ?")
    trace = _trace(model)
    on_backend = model.token_logprobs(prepared, trace)
    decoder.set_attn_implementation("sdpa")
    try:
        plain = model.token_logprobs(prepared, trace)
    finally:
        model._install_capture_backend()
    np.testing.assert_array_equal(on_backend, plain)
    model.attention_matrices(prepared, trace)
    assert decoder.config._attn_implementation == CAPTURE_BACKEND


def test_attention_capture_fallback_equals_eager_attention(model, image, monkeypatch):
    """Where no fused kernel fits (a mask, another device), lse comes from an explicit q·Kᵀ: same weights."""
    from vattr_bench.models.capture import backend as capture_backend

    monkeypatch.setattr(capture_backend, "fused_fits", lambda *args: False)
    prepared = model.prepare(image, "what color is the circle ?")
    trace = _trace(model, "the circle is red .")
    with model.capture_visual_attention(prepared) as capture:
        ids = model.generate_ids(prepared, max_new_tokens=4)  # decode steps through the fallback too
    np.testing.assert_allclose(capture.attention(len(ids)), model.attention_to_visual(prepared, ids, eager=True), atol=1e-5)
    np.testing.assert_allclose(model.attention_to_visual(prepared, trace),
                               model.attention_to_visual(prepared, trace, eager=True), atol=1e-5)


def test_a_fused_kernel_whose_lse_disagrees_is_not_trusted(tiny, monkeypatch):
    """Each fused kernel's lse is checked once against q·Kᵀ's: a kernel answering in another unit (here log₂)
    is dropped with a warning and the weights stay exact; the real CPU kernel passes the check."""
    from vattr_bench.models.capture import backend as capture_backend

    prepared = tiny.prepare(synthetic_sample("general", 0).image, "what color is the circle ?")
    trace = _trace(tiny, "the circle is red .")
    eager = tiny.attention_to_visual(prepared, trace, eager=True)
    monkeypatch.setattr(capture_backend, "_FUSED_OK", {})
    tiny.attention_to_visual(prepared, trace)
    assert list(capture_backend._FUSED_OK.values()) == [True]  # the CPU flash kernel, trusted and used

    cpu_flash = capture_backend._FUSED_KERNELS["cpu"]

    def log2_lse(*args):
        out, lse = cpu_flash(*args)
        return out, lse / np.log(2)

    monkeypatch.setattr(capture_backend, "_FUSED_OK", {})
    monkeypatch.setitem(capture_backend._FUSED_KERNELS, "cpu", log2_lse)
    with pytest.warns(UserWarning, match="differs from q·Kᵀ"):
        fast = tiny.attention_to_visual(prepared, trace)
    assert list(capture_backend._FUSED_OK.values()) == [False]
    np.testing.assert_allclose(fast, eager, atol=1e-5)


def test_cuda_capture_takes_the_lse_of_the_kernel_sdpa_picks(monkeypatch):
    """On CUDA the capture runs the kernel sdpa itself would (`torch._fused_sdp_choice`, asked with grouped
    K/V as they are and enable_gqa, as transformers' sdpa asks) and reads its lse in that kernel's layout —
    cuDNN's (B, H, q, 1), the memory-efficient kernel's padded to its block of 32 rows, flash's (B, H, q) —
    or leaves the lse to q·Kᵀ for the math kernel. cuDNN and flash get grouped K/V unrepeated; the
    memory-efficient kernel, which takes no grouped heads, gets them repeated in float32 (where sdpa runs
    math for them), and not at all in bf16. The CUDA ops are stood in for
    by the CPU kernel in each one's layout (as an H200 returned them), so the routing is checked without a GPU."""
    from vattr_bench.models.capture import backend as capture_backend

    cpu_flash = capture_backend._cpu_flash
    calls = []  # (kernel, kv heads it was given, whether cuDNN was asked for its statistics)

    def cudnn(q, k, v, bias, compute_log_sumexp, dropout, causal, debug_mask, scale):
        calls.append(("cudnn", k.shape[1], compute_log_sumexp))
        out, lse = cpu_flash(q, k, v, dropout, causal, scale=scale)[:2]
        return out, lse[..., None]

    def efficient(q, k, v, bias, compute_log_sumexp, dropout, causal, scale):
        calls.append(("efficient", k.shape[1], None))
        out, lse = cpu_flash(q, k, v, dropout, causal, scale=scale)[:2]
        padded = torch.full((*lse.shape[:2], -(-lse.shape[2] // 32) * 32), float("inf"))
        padded[..., :lse.shape[2]] = lse
        return out, padded

    def flash(q, k, v, dropout, causal, scale):
        calls.append(("flash", k.shape[1], None))
        return cpu_flash(q, k, v, dropout, causal, scale=scale)[:2]

    for name, op in [("_scaled_dot_product_cudnn_attention", cudnn), ("_scaled_dot_product_efficient_attention", efficient),
                     ("_scaled_dot_product_flash_attention", flash)]:
        monkeypatch.setattr(torch.ops.aten, name, op)

    def sdpa_choice(backend):
        def choose(q, k, v, mask, dropout, causal, scale=None, enable_gqa=False):
            assert enable_gqa == (k.shape[1] != q.shape[1])  # asked as sdpa is: grouped K/V only with enable_gqa
            grouped = k.shape[1] != q.shape[1]
            return SDPBackend.MATH.value if backend == SDPBackend.EFFICIENT_ATTENTION and grouped else backend.value
        return choose

    torch.manual_seed(0)
    for kv_heads in (4, 2):
        for q_len, causal in [(1, False), (40, True)]:
            q, k, v = torch.randn(1, 4, q_len, 8), torch.randn(1, kv_heads, 40, 8), torch.randn(1, kv_heads, 40, 8)
            explicit = capture_backend.explicit_lse(q, k, None, 0.5)
            reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.5,
                                                                         enable_gqa=kv_heads < 4)
            for backend, kernel in [(SDPBackend.CUDNN_ATTENTION, "cudnn"), (SDPBackend.EFFICIENT_ATTENTION, "efficient"),
                                    (SDPBackend.FLASH_ATTENTION, "flash")]:
                monkeypatch.setattr(torch, "_fused_sdp_choice", sdpa_choice(backend))
                calls.clear()
                out, lse = capture_backend._cuda_fused(q, k, v, 0.5, causal)
                assert [c[:2] for c in calls] == [(kernel, 4 if kernel == "efficient" else kv_heads)]
                assert calls[0][2] is (True if kernel == "cudnn" else None)  # cuDNN computes its statistics only when asked
                assert lse.shape == (1, 4, q_len), backend
                torch.testing.assert_close(lse, explicit, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out, reference)
            if kv_heads < 4:  # in bf16, where sdpa runs math for grouped heads the capture does too: explicit lse
                monkeypatch.setattr(torch, "_fused_sdp_choice", sdpa_choice(SDPBackend.EFFICIENT_ATTENTION))
                assert capture_backend._cuda_fused(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.5, causal) is None
            monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *args, **kw: SDPBackend.MATH.value)
            assert capture_backend._cuda_fused(q, k, v, 0.5, causal) is None


def test_grouped_query_models_capture_without_repeating_the_cache(monkeypatch):
    """A grouped-query decoder (the tiny Qwen2.5-VL: 4 query heads, 2 kv heads) hands its kernel K/V as they
    are, as sdpa does — repeating them per query head copies the whole cache in every layer and step — and
    its capture still equals eager attention."""
    from vattr_bench.models.capture import backend as capture_backend

    model = tiny_archs.build("qwen2_5_vl")
    kv_heads_seen = []
    cpu_kernel = capture_backend._FUSED_KERNELS["cpu"]

    def counted(q, k, v, scale, causal):
        kv_heads_seen.append((q.shape[1], k.shape[1]))
        return cpu_kernel(q, k, v, scale, causal)

    monkeypatch.setitem(capture_backend._FUSED_KERNELS, "cpu", counted)
    prepared = model.prepare(synthetic_sample("general", 0).image.resize((96, 64)), "what color is the circle ?")
    with model.capture_visual_attention(prepared) as capture:
        ids = model.generate_ids(prepared, max_new_tokens=4)
    assert kv_heads_seen and set(kv_heads_seen) == {(4, 2)}
    np.testing.assert_allclose(capture.attention(len(ids)), model.attention_to_visual(prepared, ids, eager=True), atol=1e-5)


def test_explicit_lse_reads_grouped_heads_without_repeating_them():
    """q·Kᵀ's lse with grouped-query K (query head h reads kv head h // groups) equals it with K repeated
    per query head, under causal masking and an explicit mask."""
    from transformers.integrations.sdpa_attention import repeat_kv
    from vattr_bench.models.capture import backend as capture_backend

    torch.manual_seed(0)
    q, k = torch.randn(1, 6, 5, 8), torch.randn(1, 2, 9, 8)
    mask = torch.rand(1, 1, 5, 9) > 0.3
    mask[..., 0] = True
    for m in (None, mask):
        torch.testing.assert_close(capture_backend.explicit_lse(q, k, m, 0.3),
                                   capture_backend.explicit_lse(q, repeat_kv(k, 3), m, 0.3))
        scores = (q @ repeat_kv(k, 3).transpose(-1, -2)) * 0.3
        allowed = torch.ones(5, 9, dtype=torch.bool).tril(4) if m is None else m
        torch.testing.assert_close(capture_backend.explicit_lse(q, k, m, 0.3),
                                   torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), -1))


@pytest.mark.parametrize("arch", ["vattr-tiny", "qwen2_5_vl"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_capture_in_bfloat16_runs_sdpas_own_kernel(device, arch, monkeypatch):
    """A bf16 model (how real ones run on a GPU), with 16 heads of dim 8 (vattr-tiny) or grouped-query heads
    (the tiny Qwen2.5-VL: 4 query / 2 kv heads of dim 16): the capture runs the kernel sdpa itself picks (the
    same log-probs with and without a capture) — taking its lse where that kernel hands one back (CPU flash;
    CUDA cuDNN, flash or memory-efficient: on an H200 with torch 2.11 sdpa picks cuDNN for bf16), else
    computing lse explicitly — and the weights equal those of the explicit q·Kᵀ (eager attention itself
    rounds its bf16 scores: ~5e-2 off both here)."""
    from vattr_bench.models.capture import backend as capture_backend

    if arch == "vattr-tiny":
        model, image = load_model(arch, device=device, dtype="bfloat16"), synthetic_sample("general", 0).image
    else:
        model, image = tiny_archs.build(arch), synthetic_sample("general", 0).image.resize((96, 64))
        model.model.to(device, torch.bfloat16)
    prepared = model.prepare(image, "what color is the circle ?")
    monkeypatch.setattr(capture_backend, "_FUSED_OK", {})
    with model.capture_visual_attention(prepared) as fused:
        ids = model.generate_ids(prepared, max_new_tokens=8)
    with model.capture_visual_attention(prepared):
        captured = model.token_logprobs(prepared, ids)
    np.testing.assert_allclose(captured, model.token_logprobs(prepared, ids), atol=1e-6)
    with_lse = {b.value for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)}
    text = model.model.config.get_text_config()
    head_dim, kv_heads = fused.rows()[0].shape[-1], text.num_key_value_heads
    q = torch.zeros(1, model.num_heads, 1, head_dim, dtype=torch.bfloat16, device=device)
    k = torch.zeros(1, kv_heads, 40, head_dim, dtype=torch.bfloat16, device=device)
    sdpa_has_lse = device == "cpu" or torch._fused_sdp_choice(
        q, k, k, None, 0.0, False, enable_gqa=kv_heads < model.num_heads) in with_lse
    assert all(capture_backend._FUSED_OK.values())
    assert ((device, torch.bfloat16, head_dim, False) in capture_backend._FUSED_OK) == sdpa_has_lse  # decode steps
    monkeypatch.setattr(capture_backend, "fused_fits", lambda *args: False)
    with model.capture_visual_attention(prepared) as explicit:
        assert model.generate_ids(prepared, max_new_tokens=8) == ids
    # bf16 activations through another kernel would differ from the next layer on (~6% on an H200): same kernel here
    np.testing.assert_allclose(fused.attention(len(ids)), explicit.attention(len(ids)), atol=1e-3)


def test_attention_captured_during_generation_equals_teacher_forced(model, image):
    """Decode steps (one query over the KV cache) capture the same rows as one teacher-forced pass."""
    prepared = model.prepare(image, "what color is the circle ?")
    with model.capture_visual_attention(prepared) as capture:
        ids = model.generate_ids(prepared, max_new_tokens=6)
    during = capture.attention(len(ids))
    # decode steps and one teacher-forced pass are different float32 products (the hidden states differ in the
    # last bits, not only the capture): 1e-5 plus 1e-5 relative, as tests/test_cuda.py — on an Intel Xeon VM one
    # of the 24,576 weights, 0.9996, differed by 1.08e-5
    np.testing.assert_allclose(during, model.attention_to_visual(prepared, ids, eager=True), atol=1e-5, rtol=1e-5)


def test_capture_rows_are_trace_tokens_while_generating_and_teacher_forced(model, image, monkeypatch):
    """Row t is the query that predicts trace token t, whether written one decode step at a time or by one
    teacher-forced pass, and whether or not the buffers had to grow on the way."""
    from vattr_bench.models.capture import VisualAttentionCapture

    prepared = model.prepare(image, "what color is the circle ?")
    with model.capture_visual_attention(prepared) as generated:
        ids = model.generate_ids(prepared, max_new_tokens=6)
    with model.capture_visual_attention(prepared) as forced:
        model.token_logprobs(prepared, ids)
    monkeypatch.setattr(VisualAttentionCapture, "INITIAL_ROWS", 1)  # grows for the prefill's row, then the steps
    with model.capture_visual_attention(prepared) as grown:
        model.generate_ids(prepared, max_new_tokens=6)
    assert forced.n_rows == len(ids) + 1 and generated.n_rows == grown.n_rows >= len(ids)
    queries, lse = generated.rows(1, 3)
    assert queries.shape == (model.num_layers, model.num_heads, 2, queries.shape[-1]) and lse.shape == queries.shape[:3]
    for other in (forced, grown):  # forced: another float32 path, so 1e-5 relative too (see the test above)
        np.testing.assert_allclose(generated.weights(1, 3), other.weights(1, 3), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(other.attention(len(ids)), generated.attention(len(ids)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no captured rows"):
        generated.rows(50, 60)


def test_save_and_reload_through_load_model(tmp_path):
    model = tiny_archs.build("qwen3_vl")
    model.model.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    img = synthetic_sample("general", 1).image
    p1, p2 = model.prepare(img, "what color is the circle ?"), again.prepare(img, "what color is the circle ?")
    assert torch.equal(p1.inputs["input_ids"], p2.inputs["input_ids"])
    np.testing.assert_allclose(model.token_logprobs(p1, _trace(model)), again.token_logprobs(p2, _trace(model)), atol=1e-5)


def test_bad_inputs_are_clear_errors(tiny, tmp_path):
    img = synthetic_sample("math", 0).image
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny.prepare(img, "  ")
    with pytest.raises(ValueError, match="at least 8"):
        tiny.prepare(Image.new("RGB", (4, 40)), "what is the sum of the bars ?")
    gray = tiny.prepare(img.convert("L"), "what is the sum of the bars ?")  # odd modes are converted
    assert gray.inputs["pixel_values"].shape[1] == 3
    with pytest.raises(ValueError, match="cannot load model 'no-such/model'"):
        load_model("no-such/model")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_visual_embeddings_round_trip(model, image):
    """Feeding the captured visual embeddings back reproduces the model; the path is differentiable."""
    prepared = model.prepare(image, "what color is the circle ?")
    trace = _trace(model)
    feats = torch.as_tensor(model.visual_features(prepared))
    assert feats.shape[0] == prepared.n_visual_tokens
    batch = torch.stack([feats, feats]).requires_grad_(True)
    logp = model.logprobs_from_visual_embeddings(prepared, trace, batch)
    assert logp.shape == (2, len(trace))
    np.testing.assert_allclose(logp.detach().numpy(), np.tile(model.token_logprobs(prepared, trace), (2, 1)), atol=1e-5)
    logp.sum().backward()
    assert batch.grad.abs().sum() > 0


def test_capture_flush_writes_decode_runs_and_single_calls_alike():
    """`record` only keeps references; `flush` writes runs of decode steps in one go and any other call on
    its own. Rows: a prompt pass, decode steps, a gap in positions, a step whose layers came out of order."""
    from vattr_bench.models.capture import VisualAttentionCapture

    L, H, d, P = 2, 3, 4, 5
    capture = VisualAttentionCapture({i: i for i in range(L)}, np.arange(2), first_row=P - 1)  # keys: module ids
    rng = torch.Generator().manual_seed(0)
    expected = {}  # row -> (L, H, d) queries

    def call(layer, kv_len, q_len):
        query, lse = torch.randn(1, H, q_len, d, generator=rng), torch.randn(1, H, q_len, generator=rng)
        capture.record(layer, query, torch.randn(1, H, kv_len, d, generator=rng), lse, 0.5)
        for j in range(q_len):
            row = kv_len - q_len + j - (P - 1)
            if row >= 0:
                expected.setdefault(row, np.zeros((L, H, d), np.float32))[layer] = query[0, :, j].numpy()

    for layer in range(L):
        call(layer, P, P)  # the prompt: only its last query is a row
    for step in range(3):
        for layer in range(L):
            call(layer, P + 1 + step, 1)
    assert capture.n_rows == 0  # nothing is visible before a flush
    capture.flush()
    assert capture.n_rows == 4
    for layer in range(L):
        call(layer, P + 6, 1)  # a gap: rows 4 and 5 never written, row 6 is
    for layer in reversed(range(L)):
        call(layer, P + 7, 1)
    capture.flush()
    for position in (P + 8, P + 10):  # layers in order, positions jump: not one run of decode steps
        for layer in range(L):
            call(layer, position, 1)
    capture.flush()
    queries, lse = capture.rows(0, 11)
    assert capture.n_rows == 11 and lse.shape == (L, H, 11)
    for row, want in expected.items():
        np.testing.assert_array_equal(queries[:, :, row], want)
