"""A model placed by accelerate (`load_model(device_map=…)`, `--device-map`) gives what the same model on one
device gives: log-probs, the attention capture, value norms and the logit readout, gradients, ablation and
the amortized method. On a CPU-only machine accelerate can split a model over "cpu" and "disk" (weights
offloaded to an offload folder and loaded into each layer for its forward), which exercises the same hooks
and weight loading that a split over several GPUs does."""
import numpy as np
import pytest

pytest.importorskip("accelerate", reason="--device-map needs accelerate (pip install accelerate)")

from vattr_bench.benchmarks import synthetic_sample  # noqa: E402
from vattr_bench.methods import AttributionContext, load_method  # noqa: E402
from vattr_bench.models import load_model  # noqa: E402
from vattr_bench.regions import make_regions, single_region_effects  # noqa: E402

TOL = 1e-5
pytestmark = pytest.mark.slow  # a disk-offloaded model reloads its weights every forward: ~1 min on 2 busy cores


def split_map(model, offload_every_other: bool = True) -> dict:
    """Every decoder layer its own entry, the odd ones offloaded to disk; the rest on the CPU. (The output
    embeddings stay on the CPU: tied to the input embeddings, they are one tensor.)"""
    root = "model.language_model"
    placement = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "lm_head": "cpu",
                 f"{root}.embed_tokens": "cpu", f"{root}.norm": "cpu", f"{root}.rotary_emb": "cpu"}
    for i in range(model.num_layers):
        placement[f"{root}.layers.{i}"] = "disk" if offload_every_other and i % 2 else "cpu"
    return placement


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    whole = load_model("vattr-tiny")
    split = load_model("vattr-tiny", device_map=split_map(whole), offload_folder=str(tmp_path_factory.mktemp("offload")))
    sample = synthetic_sample("math", 0)
    prepared = whole.prepare(sample.image, sample.prompt), split.prepare(sample.image, sample.prompt)
    trace = whole.generate(prepared[0], max_new_tokens=40)
    regions, _ = make_regions("feature-ward", whole, prepared[0], k=16, sample=sample)
    return whole, split, sample, prepared, trace, regions


def test_split_model_is_placed_across_cpu_and_disk(pair):
    whole, split, *_ = pair
    assert set(split.model.hf_device_map.values()) == {"cpu", "disk"}
    assert any(p.device.type == "meta" for p in split.model.parameters())  # the offloaded layers' weights
    assert str(split.device) == "cpu" and split.dtype == whole.dtype


def test_generation_logprobs_and_capture_match(pair):
    whole, split, _, (p_whole, p_split), trace, _ = pair
    assert split.generate(p_split, max_new_tokens=40).token_ids == trace.token_ids
    np.testing.assert_allclose(split.token_logprobs(p_split, trace.token_ids),
                               whole.token_logprobs(p_whole, trace.token_ids), atol=TOL)
    np.testing.assert_allclose(split.attention_to_visual(p_split, trace.token_ids),
                               whole.attention_to_visual(p_whole, trace.token_ids), atol=TOL)
    np.testing.assert_allclose(split.visual_value_norms(p_split), whole.visual_value_norms(p_whole), atol=TOL)
    ids = trace.token_ids[:5]
    np.testing.assert_allclose(split.logit_readout().directions(ids), whole.logit_readout().directions(ids), atol=TOL)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "amortized", "attention"])
def test_methods_score_alike(pair, method):
    whole, split, sample, (p_whole, p_split), trace, regions = pair
    scores = [load_method(method).attribute(AttributionContext(model=m, sample=sample, prepared=p, trace=trace,
                                                                regions=regions))
              for m, p in ((whole, p_whole), (split, p_split))]
    assert np.abs(scores[0]).max() > 0  # a method that scored nothing would match trivially
    np.testing.assert_allclose(scores[1], scores[0], atol=TOL, rtol=1e-4)


def test_ablation_matches(pair):
    whole, split, _, (p_whole, p_split), trace, regions = pair
    np.testing.assert_allclose(single_region_effects(split, p_split, trace, regions),
                               single_region_effects(whole, p_whole, trace, regions), atol=TOL)


def test_bad_device_map_is_refused_before_loading():
    with pytest.raises(ValueError, match="--device-map 'everywhere'"):
        load_model("vattr-tiny", device_map="everywhere")
