import json
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch

import tiny_archs
from vattr_bench.amortized import LOGIT_FEATURES, LinearEstimator, SpanAttributor, span_region_features
from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.cli import main
from vattr_bench.methods import AttributionContext, load_method
from vattr_bench.methods.amortized import Amortized
from vattr_bench.models.adapter import CaptureOptions
from vattr_bench.regions import make_regions
from vattr_bench.streaming import stream_attributions


def _stream_case(tiny, family: str):
    """A test sample's prompt, regions, the amortized method, vattr-tiny's trace and the method's context."""
    s = synthetic_sample(family, 7)
    prepared = tiny.prepare(s.image, s.prompt)
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16)
    trace = tiny.generate(prepared, max_new_tokens=128)
    return prepared, regions, load_method("amortized"), trace, AttributionContext(tiny, s, prepared, trace, regions, "knockout")


@pytest.mark.parametrize("family", ["general", "math"])
@pytest.mark.slow  # 38-94 s a family on a loaded 2-core machine
def test_stream_is_ordered_complete_and_equal_to_offline(tiny, family):
    prepared, regions, method, trace, ctx = _stream_case(tiny, family)
    seen = []
    events = stream_attributions(tiny, prepared, regions, method.estimator_for(ctx), max_new_tokens=128, on_event=seen.append)
    assert seen == events
    # complete and in order: one event per span of the offline trace, same token ranges and text
    assert [(e.start, e.end, e.text, e.is_answer) for e in events] == [(sp.start, sp.end, sp.text, sp.is_answer) for sp in trace.spans]
    assert [e.index for e in events] == list(range(len(events)))
    assert all(a.emitted_s <= b.emitted_s for a, b in zip(events, events[1:]))
    assert all(0 < e.attribution_s <= e.lag_s for e in events)  # the work starts after the span closed
    # emitted while generating: a thinking span's event comes before the answer is written
    assert events[0].tokens_generated < events[-1].end
    # float32 kernels of different shapes (one decode step vs one teacher-forced pass): equal to ~1e-6 relative
    np.testing.assert_allclose(np.stack([e.scores for e in events]), method.attribute(ctx), rtol=1e-5, atol=1e-5)
    inline = stream_attributions(tiny, prepared, regions, method.estimator_for(ctx), max_new_tokens=128, worker=False)
    np.testing.assert_allclose(np.stack([e.scores for e in inline]), np.stack([e.scores for e in events]), atol=1e-6)


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "torch"])
@pytest.mark.slow  # 34-57 s each on a loaded 2-core machine
def test_a_stream_holds_the_rows_of_the_spans_in_flight_not_the_whole_trace(tiny, on_device, monkeypatch):
    """The worker releases each span's rows once attributed, so a full buffer drops them instead of doubling:
    with room for 8 rows at first, an 18-token trace streams in a buffer smaller than the trace, to the
    same scores as offline; reading released rows raises."""
    from vattr_bench.models.capture import VisualAttentionCapture

    prepared, regions, method, trace, ctx = _stream_case(tiny, "math")
    captures = []
    open_capture = tiny.capture_visual_attention

    @contextmanager
    def kept(prepared, options=None):
        with open_capture(prepared, replace(options or CaptureOptions(), on_device=on_device)) as capture:
            captures.append(capture)
            yield capture

    monkeypatch.setattr(tiny, "capture_visual_attention", kept)
    monkeypatch.setattr(VisualAttentionCapture, "INITIAL_ROWS", 8)
    events = stream_attributions(tiny, prepared, regions, method.estimator_for(ctx), max_new_tokens=128)
    capture = captures[0]
    longest_span = max(sp.end - sp.start for sp in trace.spans)
    assert len(trace.spans) >= 4 and capture.n_rows >= len(trace.token_ids) > 2 * 8
    assert capture._rows.shape[2] < capture.n_rows and capture._rows.shape[2] <= 2 * max(8, longest_span + 1)
    np.testing.assert_allclose(np.stack([e.scores for e in events]), method.attribute(ctx), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="released"):
        capture.weights(0, 3)


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("arch", tiny_archs.ARCHS)
def test_stream_on_the_paper_architectures_equals_offline(arch, on_device, monkeypatch):
    """Streaming runs through the adapter alone: on tiny random Qwen2.5-VL / Qwen3-VL / GLM-4.1V its events
    equal offline features (eager attention) through the same estimator. ``on_device``: the capture and the
    worker's work in torch, as on an accelerator (here on the CPU's tensors; tests/test_cuda.py on a GPU)."""
    model = tiny_archs.build(arch)
    device_spans = []
    if on_device:
        open_capture = model.capture_visual_attention
        monkeypatch.setattr(model, "capture_visual_attention",
                            lambda prepared, options=None: open_capture(prepared, replace(options or CaptureOptions(), on_device=True)))
        scores_on_device = SpanAttributor._scores_on_device
        monkeypatch.setattr(SpanAttributor, "_scores_on_device",
                            lambda self, *args: device_spans.append(args) or scores_on_device(self, *args))
    out = model.model.get_output_embeddings().weight
    silent = [i for i in range(out.shape[0]) if i >= len(model.tokenizer) or not model.decode([i]).strip()]
    with torch.no_grad():  # a random model may write only tokens without text (so no span): make it write words
        out[silent] = 0  # logit 0 for them, while about half the words score above 0
        model.model.model.language_model.norm.weight.uniform_(0.5, 1.5)  # a final-norm gain that is not all ones
    prepared = model.prepare(synthetic_sample("general", 0).image.resize((96, 64)), "what color is the circle ?")
    regions, _ = make_regions("grid", model, prepared, k=16)
    rng = np.random.default_rng(0)
    trace = model.generate(prepared, max_new_tokens=10)
    eager = model.attention_to_visual(prepared, trace.token_ids, eager=True)
    value_norms = value_norms_the_long_way(model, prepared)
    logit_values = logit_values_the_long_way(model, prepared, trace.token_ids)
    token_scales = token_scales_the_long_way(model, prepared, trace.token_ids)
    some = [1, 2, 4, 7]  # an estimator using some heads only: both query heads of a kv head, and one alone
    cases = [("sum", "attention", None), ("mean", "attention", None), ("sum", "value-weighted", None),
             ("sum", "logit-weighted", None), ("mean", "logit-weighted", None),
             ("sum", "attention", some), ("sum", "value-weighted", some), ("sum", "logit-weighted", some),
             ("sum", "direct-logit", None), ("mean", "direct-logit", some),
             ("sum", "direct-logit-signed", None), ("sum", "direct-logit-signed", some)]
    for pool, features, heads in cases:
        weights = rng.normal(size=model.num_layers * model.num_heads)
        meta = {"region_pool": pool, "features": features}
        beta = 0.5 if heads is None else -0.25  # direct-logit-signed: |x| + βx per token
        if features == "direct-logit-signed":
            meta["sign_weight"] = beta
        if heads is not None:
            weights[np.setdiff1d(np.arange(len(weights)), heads)] = 0
            meta["heads"] = heads
        estimator = LinearEstimator(weights, 0.3, meta)
        events = stream_attributions(model, prepared, regions, estimator, max_new_tokens=10)
        assert events and [(e.start, e.end) for e in events] == [(sp.start, sp.end) for sp in trace.spans]
        offline = estimator.predict(span_region_features(
            eager, trace.spans, regions.token_matrix, pool, value_norms if features == "value-weighted" else None,
            logit_values if features in LOGIT_FEATURES else None,
            token_scales if features.startswith("direct-logit") else None, beta if features == "direct-logit-signed" else 0.0))
        np.testing.assert_allclose(np.stack([e.scores for e in events]), offline, rtol=1e-5, atol=1e-5)
    assert len(device_spans) == (len(cases) * len(trace.spans) if on_device else 0)  # the torch path did the work


@torch.no_grad()
def visual_values_the_long_way(model, prepared):
    """Each layer's visual value vectors (N, H, d), grouped heads repeated, read off v_proj by a hook in a
    plain forward (no capture). A hook rather than the hidden states: Qwen3-VL adds visual features to
    the stream after early layers (deepstack)."""
    layers = model.model.model.language_model.layers
    values = {}
    hooks = [layer.self_attn.v_proj.register_forward_hook(lambda m, i, out, l=l: values.setdefault(l, out[0]))
             for l, layer in enumerate(layers)]
    try:
        model.forward(prepared, [])
    finally:
        for h in hooks:
            h.remove()
    vis = torch.as_tensor(prepared.visual_positions)
    out = []
    for l, layer in enumerate(layers):
        v = values[l][vis].view(len(vis), -1, layer.self_attn.head_dim)  # (N, H_kv, d)
        out.append(v.repeat_interleave(model.num_heads // v.shape[1], dim=1))
    return out


@torch.no_grad()
def value_norms_the_long_way(model, prepared):
    """Reference ‖W_O^h v_n‖: per head through its block of o_proj, every hidden dimension (no Gram matrices)."""
    norms = []
    for layer, v in zip(model.model.model.language_model.layers, visual_values_the_long_way(model, prepared)):
        w_o = layer.self_attn.o_proj.weight.view(-1, model.num_heads, layer.self_attn.head_dim)  # (hidden, H, d)
        norms.append(torch.stack([(v[:, h] @ w_o[:, h].T).norm(dim=-1) for h in range(model.num_heads)]))
    return torch.stack(norms).numpy()


@torch.no_grad()
def logit_values_the_long_way(model, prepared, token_ids):
    """Reference u_tᵀ W_O^h v_n (L, H, T, N): each head's write from each visual token into the residual
    stream, in full, dotted with the unembedding row of each token times the final norm's gain."""
    language_model = model.model.model.language_model
    u = model.model.get_output_embeddings().weight[list(token_ids)] * language_model.norm.weight  # (T, hidden)
    per_layer = []
    for layer, v in zip(language_model.layers, visual_values_the_long_way(model, prepared)):
        w_o = layer.self_attn.o_proj.weight.view(-1, model.num_heads, layer.self_attn.head_dim)
        writes = torch.stack([v[:, h] @ w_o[:, h].T for h in range(model.num_heads)])  # (H, N, hidden)
        per_layer.append(torch.einsum("hnc,tc->htn", writes, u))
    return torch.stack(per_layer).numpy()


@torch.no_grad()
def token_scales_the_long_way(model, prepared, token_ids):
    """Reference 1/rms (T,) of the residual the final norm reads at each trace token's row: the last decoder
    layer's output in a plain teacher-forced forward (no capture), read by a hook on that layer."""
    language_model = model.model.model.language_model
    seen = []
    hook = language_model.layers[-1].register_forward_hook(
        lambda m, i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        model.forward(prepared, list(token_ids))
    finally:
        hook.remove()
    P, T = prepared.prompt_length, len(token_ids)
    x = seen[0][0, P - 1:P - 1 + T].double()
    return (1 / torch.sqrt(x.pow(2).mean(-1) + language_model.norm.variance_epsilon)).numpy()


def test_value_weighted_amortized_streams_what_it_scores_offline(tiny, tmp_path):
    """An estimator trained on value-weighted features: the adapter's value norms equal the long-way
    reference, and the streamed scores equal the offline `amortized` method's."""
    s = synthetic_sample("general", 3)
    prepared = tiny.prepare(s.image, s.prompt)
    np.testing.assert_allclose(tiny.visual_value_norms(prepared), value_norms_the_long_way(tiny, prepared),
                               rtol=1e-4, atol=1e-5)
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16)
    shipped = load_method("amortized").load_for(tiny, "feature-ward", "knockout")
    weighted = LinearEstimator(shipped.weights, 0.0, dict(shipped.meta, features="value-weighted"))
    weighted.save(tmp_path / "weighted.json")
    LinearEstimator(shipped.weights, 0.0, dict(shipped.meta, features="attention")).save(tmp_path / "plain.json")
    trace = tiny.generate(prepared, max_new_tokens=128)
    ctx = AttributionContext(tiny, s, prepared, trace, regions, "knockout")
    offline = Amortized(str(tmp_path / "weighted.json")).attribute(ctx)
    events = stream_attributions(tiny, prepared, regions, weighted, max_new_tokens=128)
    # float32 sums over 64 heads × 64 visual tokens: the rounding scales with the largest scores
    np.testing.assert_allclose(np.stack([e.scores for e in events]), offline, rtol=1e-5,
                               atol=1e-6 * np.abs(offline).max())
    assert not np.allclose(offline, Amortized(str(tmp_path / "plain.json")).attribute(ctx))  # the weighting did something
    unknown = LinearEstimator(shipped.weights, 0.0, dict(shipped.meta, features="gradients"))
    unknown.save(tmp_path / "unknown.json")
    with pytest.raises(ValueError, match="features 'gradients' unknown"):
        LinearEstimator.load(tmp_path / "unknown.json")


def test_stream_with_an_estimator_of_another_model_says_so(tiny):
    s = synthetic_sample("math", 1)
    prepared = tiny.prepare(s.image, s.prompt)
    regions, _ = make_regions("grid", tiny, prepared, k=16)
    wrong = LinearEstimator(np.ones(tiny.num_layers * tiny.num_heads + 1), 0.0, {"region_pool": "sum"})
    with pytest.raises(ValueError, match="attention heads, the estimator 65 weights"):
        stream_attributions(tiny, prepared, regions, wrong, max_new_tokens=64)


def test_stream_cli_prints_events(tmp_path, capsys):
    img = tmp_path / "scene.png"
    synthetic_sample("general", 2).image.save(img)
    assert main(["stream", "--image", str(img), "--prompt", "describe the scene .", "--save-png", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("span ") == 4 and "answer:" in out and "top regions" in out
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert main(["stream", "--image", str(tmp_path / "none.png"), "--prompt", "x"]) == 2
    assert "image file not found" in capsys.readouterr().err


@pytest.mark.slow  # 55 s on a loaded 2-core machine
def test_perf_command_prints_the_table_and_the_summary_line(capsys, tmp_path):
    """Behaviour only (the numbers are the benchmark's business): every row and key is there."""
    out_json = tmp_path / "perf.json"
    assert main(["perf", "--benchmark", "math", "--per-family", "1", "--rounds", "1", "--lengths", "32,64",
                 "--gradient-spans", "1", "--output", str(out_json), "--save-png", str(tmp_path / "perf.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == {"overhead_pct", "lag_decode_steps", "speedup_vs_fastest_gradient", "speedup_vs_ablation",
                            "amortized_cost_ratio_64_vs_32"}
    assert all(np.isfinite(v) for v in summary.values()) and summary["speedup_vs_ablation"] > 0
    text = "\n".join(lines)
    assert "(direct-logit-signed, β 0.25 estimator)" in lines[0]  # the shipped one's features
    for row in ("overhead", "95% interval", "median lag", "| amortized |", "| amortized, first stream |",
                "| amortized, in the stream |", "| saliency |", "| integrated_gradients |", "| ablation |"):
        assert row in text
    report = json.loads(out_json.read_text())
    assert report["n_spans"] >= 3 and set(report["per_token_s"]["amortized"]) == {"32", "64"}
    assert 0 < report["per_span_s"]["amortized, in the stream"] < report["per_span_s"]["ablation"]
    assert (tmp_path / "perf.png").stat().st_size > 0
    assert main(["perf", "--lengths", "64"]) == 2
    assert main(["perf", "--estimator", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_overhead_interval_resamples_rounds_paired():
    """Rounds are resampled whole: a machine that runs some rounds 2× slower moves both modes alike, so a
    constant 3% overhead stays exactly 3%; noise of its own widens the interval around the estimate."""
    from vattr_bench.perf import overhead_interval
    rng = np.random.default_rng(0)
    plain = rng.uniform(0.1, 0.2, size=(6, 1)) * rng.choice([0.5, 1.0, 2.0], size=(1, 9))  # (prompts, rounds)
    assert overhead_interval(plain * 1.03, plain) == pytest.approx((3.0, 3.0))
    noisy = plain * 1.03 * rng.normal(1.0, 0.05, size=plain.shape)
    low, high = overhead_interval(noisy, plain)
    estimate = 100 * (np.median(noisy, 1).sum() / np.median(plain, 1).sum() - 1)
    assert low < estimate < high and high - low > 1.0
    assert all(np.isnan(overhead_interval(plain[:, :2], plain[:, :2])))


def test_logit_rows_read_span_by_span_past_the_table_and_cache_limits(tiny, monkeypatch):
    """The capture's table of logit rows grows as new tokens come and stops at its byte limit, as the model's
    cache of head directions does at its own: read a few tokens at a time past them, the rows still equal the
    long way (past the table's limit, with the tokens not in it computed per call)."""
    from vattr_bench.models.capture import LogitReadout, VisualAttentionCapture
    s = synthetic_sample("code", 2)
    prepared = tiny.prepare(s.image, s.prompt)
    ids = tiny.generate(prepared, max_new_tokens=128).token_ids
    readout = LogitReadout(tiny.logit_readout().directions)  # a cache of its own
    row_bytes = readout.directions(ids[:1]).nbytes
    readout.CACHE_BYTES = 3 * row_bytes  # room for three tokens' directions
    monkeypatch.setattr(tiny, "_readout", readout)
    monkeypatch.setattr(VisualAttentionCapture, "INITIAL_LOGIT_SLOTS", 2)
    with tiny.capture_visual_attention(prepared, CaptureOptions(logit_readout=True)) as capture:
        tiny.token_logprobs(prepared, ids)
    pieces = [capture.logit_values(ids[i:i + 3]) for i in range(0, len(ids), 3)]
    distinct = len(set(ids))
    assert distinct > 4 and capture._logit_table.shape[1] >= distinct and len(capture._logit_slot) == distinct
    assert len(readout._directions) == 3 and readout._cached_bytes <= readout.CACHE_BYTES
    with readout.nothing_kept():  # perf's first stream: none kept inside, the kept ones back after
        assert not readout._directions
        readout.head_directions(ids[-2:])
    assert len(readout._directions) == 3 and readout._cached_bytes == 3 * row_bytes
    # a model on an accelerator computes the directions there, as tensors on its device: the same rows
    on_device = tiny.logit_readout(on_device=True)
    assert on_device is not tiny.logit_readout()
    np.testing.assert_allclose(on_device.head_directions(ids).numpy(), tiny.logit_readout().head_directions(ids),
                               rtol=1e-5, atol=1e-6)
    # an estimator of some heads gets a readout of just their columns, in their order, on either path
    heads, d = [3, 17, 40, 63], tiny.logit_readout().head_directions(ids[:1]).shape[1] // 64
    every = tiny.logit_readout().head_directions(ids).reshape(len(ids), 64, d)
    for on_device in (False, True):
        some = np.asarray(tiny.logit_readout(on_device=on_device, heads=heads).head_directions(ids))
        np.testing.assert_allclose(some, every[:, heads].reshape(len(ids), -1), rtol=1e-5, atol=1e-6)
    assert tiny.logit_readout(heads=heads) is tiny.logit_readout(heads=tuple(heads))  # kept per head set
    long_way = logit_values_the_long_way(tiny, prepared, ids)
    np.testing.assert_allclose(np.concatenate(pieces, axis=2), long_way, rtol=1e-4, atol=1e-5)
    # a capture's table holds at most LOGIT_TABLE_BYTES: here room for 3 tokens, the others computed per call
    slot_bytes = capture._logit_table[:, 0].nbytes
    monkeypatch.setattr(VisualAttentionCapture, "LOGIT_TABLE_BYTES", 3 * slot_bytes + 1)
    for on_device in (False, True):  # numpy, or torch tensors as on an accelerator
        with tiny.capture_visual_attention(prepared, CaptureOptions(logit_readout=True, on_device=on_device)) as capped:
            tiny.token_logprobs(prepared, ids)
        pieces = [np.asarray(capped.logit_values(ids[i:i + 3])) for i in range(0, len(ids), 3)]
        assert len(capped._logit_slot) == 3 and capped._logit_table.nbytes == 3 * slot_bytes
        np.testing.assert_allclose(np.concatenate(pieces, axis=2), long_way, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(capped.logit_values(ids)), long_way, rtol=1e-4, atol=1e-5)  # kept and not
