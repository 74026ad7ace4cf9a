"""The adapter's, the streaming worker's and evaluate's contracts on a CUDA GPU; skipped where there is none
(CI has none: these run when a GPU machine is at hand, `pytest tests/test_cuda.py`).

On CUDA the capture takes each query's lse from the kernel sdpa picks (memory-efficient in float32 here;
cuDNN in bf16 on Hopper, tested in tests/test_hf_adapter.py) and the logit readout computes head directions on
the device: each is checked against eager attention or the host's numpy path, streaming against offline
scoring, and a whole evaluate run against the same run on the CPU."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_archs
from vattr_bench import amortized
from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.evaluate import EvalConfig, evaluate
from vattr_bench.methods import AttributionContext
from vattr_bench.methods.amortized import Amortized
from vattr_bench.models import load_model
from vattr_bench.models.capture import backend as capture_backend
from vattr_bench.regions import make_regions
from vattr_bench.streaming import stream_attributions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_tiny():
    return load_model("vattr-tiny", device="cuda")


@pytest.fixture(scope="module", params=["vattr-tiny", *tiny_archs.ARCHS])
def gpu_model(request, gpu_tiny):
    if request.param == "vattr-tiny":
        return gpu_tiny
    model = tiny_archs.build(request.param)
    model.model.to("cuda")
    return model


def _image(model):
    image = synthetic_sample("general", 0).image
    return image if model.model_type == "llava" else image.resize((96, 64))


def test_capture_on_cuda_takes_the_fused_kernels_lse_and_equals_eager(gpu_model, monkeypatch):
    monkeypatch.setattr(capture_backend, "_FUSED_OK", {})
    explicit = []
    lse_explicit = capture_backend.explicit_lse

    def counted(*args):
        explicit.append(args[0].shape)
        return lse_explicit(*args)

    monkeypatch.setattr(capture_backend, "explicit_lse", counted)
    prepared = gpu_model.prepare(_image(gpu_model), "what color is the circle ?")
    with gpu_model.capture_visual_attention(prepared) as capture:
        ids = gpu_model.generate_ids(prepared, max_new_tokens=6)
    eager = gpu_model.attention_to_visual(prepared, ids, eager=True)
    # float32 kernels of other shapes than eager's: on an H200, 4 of vattr-tiny's 24,576 weights differed by up to
    # 1.6e-5, all of them weights near 1 (1.6e-5 relative), hence the relative term
    np.testing.assert_allclose(capture.attention(len(ids)), eager, rtol=1e-5, atol=1e-5)
    # the prompt pass (causal) and the decode steps: each kind checked once against q·Kᵀ, then trusted
    head_dim = capture.rows()[0].shape[-1]
    assert ("cuda", torch.float32, head_dim, True) in capture_backend._FUSED_OK
    assert all(capture_backend._FUSED_OK.values()), capture_backend._FUSED_OK
    assert len(explicit) == len(capture_backend._FUSED_OK)  # only the checks: every other call used the kernel
    with gpu_model.capture_visual_attention(prepared):  # the kernel sdpa runs: the same log-probs as without
        captured = gpu_model.token_logprobs(prepared, ids)
    np.testing.assert_allclose(captured, gpu_model.token_logprobs(prepared, ids), atol=1e-5)


def test_logit_readout_on_the_device_equals_the_hosts(gpu_model):
    ids = list(range(min(40, gpu_model.model.get_output_embeddings().weight.shape[0])))
    on_device = gpu_model.logit_readout()
    host = gpu_model.logit_readout(on_device=False)
    assert on_device is not host
    rows = on_device.head_directions(ids)
    assert rows.device.type == "cuda"  # they stay there for a capture on the device
    np.testing.assert_allclose(rows.cpu().numpy(), host.head_directions(ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", [None, "vattr-tiny.16-heads.estimator.json"], ids=["shipped", "16-heads"])
def test_stream_on_cuda_equals_offline_and_the_cpu(gpu_tiny, tiny, estimator):
    """The shipped estimator, and the one of 16 heads (the capture reads those on the device)."""
    s = synthetic_sample("math", 7)
    prepared_cpu, prepared = tiny.prepare(s.image, s.prompt), gpu_tiny.prepare(s.image, s.prompt)
    regions, _ = make_regions("feature-ward", tiny, prepared_cpu, k=16)  # the same regions on both devices
    method = Amortized(None if estimator is None else str(Path(amortized.__file__).parent / estimator))
    trace_cpu, trace = tiny.generate(prepared_cpu, max_new_tokens=128), gpu_tiny.generate(prepared, max_new_tokens=128)
    assert trace.token_ids == trace_cpu.token_ids
    ctx = AttributionContext(gpu_tiny, s, prepared, trace, regions, "knockout")
    events = stream_attributions(gpu_tiny, prepared, regions, method.estimator_for(ctx), max_new_tokens=128)
    assert [(e.start, e.end) for e in events] == [(sp.start, sp.end) for sp in trace.spans]
    offline = method.attribute(ctx)
    np.testing.assert_allclose(np.stack([e.scores for e in events]), offline, rtol=1e-5, atol=1e-5)
    offline_cpu = method.attribute(AttributionContext(tiny, s, prepared_cpu, trace_cpu, regions, "knockout"))
    np.testing.assert_allclose(offline, offline_cpu, rtol=1e-4, atol=1e-4)


def test_evaluate_on_cuda_scores_what_the_cpu_scores(tmp_path):
    """Every kind of method (ablation truth, gradients through Captum, attention, amortized) on the GPU."""
    methods = ["ablation", "amortized", "attention", "attention_last", "rollout", "saliency", "input_x_gradient",
               "integrated_gradients", "captum_ablation"]
    scores = {}
    for device in ("cpu", "cuda"):
        evaluate(EvalConfig(methods=methods, benchmark="general", limit=1, output_dir=str(tmp_path / device),
                            device=device))
        records = [json.loads(line) for line in (tmp_path / device / "samples.jsonl").read_text().splitlines()]
        assert not [r for r in records if r.get("error")], records
        scores[device] = {r["method"]: np.asarray(r["scores"]) for r in records}
    assert set(scores["cuda"]) == set(scores["cpu"]) == set(methods)
    for method, cpu in scores["cpu"].items():
        np.testing.assert_allclose(scores["cuda"][method], cpu, rtol=1e-3, atol=1e-4, err_msg=method)
