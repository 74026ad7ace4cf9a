import numpy as np
import pytest
import torch

from fake_model import AdditiveModel, one_token_per_region
from vattr_bench import methods as method_registry
from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.methods import BUILTIN, AttributionContext, load_method
from vattr_bench.regions import make_regions, single_region_effects

PLUGIN = '''
import numpy as np

class Echo:
    name = "echo"
    def attribute(self, ctx):
        return np.ones((ctx.n_spans, ctx.regions.k))
'''


def test_builtins_and_plugin_files_load(tmp_path):
    assert set(BUILTIN) == {"amortized", "ablation", "attention", "attention_last", "rollout", "saliency", "input_x_gradient",
                            "integrated_gradients", "attnlrp", "tam", "captum_ablation", "random", "uniform",
                            "region_area"}
    plugin = tmp_path / "echo.py"
    plugin.write_text(PLUGIN)
    assert load_method(f"{plugin}:Echo").name == "echo"
    with pytest.raises(ValueError, match="has no class 'Nope'"):
        load_method(f"{plugin}:Nope")
    with pytest.raises(ValueError, match="plugin file not found"):
        load_method(f"{tmp_path}/missing.py:Echo")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ValueError, match="failed to import"):
        load_method(f"{broken}:X")
    with pytest.raises(ValueError, match="unknown method 'telepathy'"):
        load_method("telepathy")


def test_entry_point_plugins_are_found(monkeypatch, tmp_path):
    class EP:
        name, value = "echo-ep", "echo:Echo"

        def load(self):
            return type("Echo", (), {"name": "echo-ep", "attribute": lambda self, ctx: None})

    monkeypatch.setattr(method_registry, "entry_points", lambda group: [EP()] if group == "vattr_bench.methods" else [])
    assert load_method("echo-ep").name == "echo-ep"
    assert method_registry.available_methods()["echo-ep"].startswith("plugin")


@pytest.fixture(scope="module")
def tiny_ctx(tiny):
    s = synthetic_sample("math", 3)
    prepared = tiny.prepare(s.image, s.prompt)
    trace = tiny.trace_from_ids(prepared, tiny.tokenizer.convert_tokens_to_ids(s.reference_trace.split()))
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16)
    return AttributionContext(tiny, s, prepared, trace, regions, "knockout")


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "captum_ablation"])
def test_every_builtin_returns_a_finite_attribution(tiny_ctx, name):
    scores = load_method(name).attribute(tiny_ctx)
    assert scores.shape == (tiny_ctx.n_spans, tiny_ctx.regions.k) and np.all(np.isfinite(scores))


def test_attention_is_the_pooled_attention_map(tiny_ctx):
    attn = tiny_ctx.attention_to_visual()  # (L, H, T, N)
    span = tiny_ctx.trace.spans[1]
    region = tiny_ctx.regions.token_matrix[3]
    expected = attn.mean(axis=(0, 1))[span.start:span.end][:, region].sum(1).mean()
    assert load_method("attention").attribute(tiny_ctx)[1, 3] == pytest.approx(expected)
    expected_last = attn[-1].mean(0)[span.start:span.end][:, region].sum(1).mean()
    assert load_method("attention_last").attribute(tiny_ctx)[1, 3] == pytest.approx(expected_last)


def test_input_x_gradient_is_the_directional_derivative(tiny_ctx):
    """Captum wired right: Σ_n e_n·∂f/∂e_n equals the derivative of f along the embeddings themselves,
    f((1+ε)e) − f((1−ε)e) over 2ε, per span (f = the span's summed log-prob)."""
    scores = load_method("input_x_gradient").attribute(tiny_ctx)
    model, ids = tiny_ctx.model, tiny_ctx.trace.token_ids
    real = torch.as_tensor(model.visual_features(tiny_ctx.prepared)).unsqueeze(0)
    eps = 1e-2
    with torch.no_grad():
        up, down = (model.logprobs_from_visual_embeddings(tiny_ctx.prepared, ids, real * (1 + sign * eps))[0].numpy()
                    for sign in (1, -1))
    expected = np.array([(up - down)[s.start:s.end].sum() / (2 * eps) for s in tiny_ctx.trace.spans])
    np.testing.assert_allclose(scores.sum(1), expected, rtol=0.02, atol=1e-3)


def test_captum_ablation_agrees_with_our_mean_fill_ablation(tiny_ctx):
    ctx = AttributionContext(tiny_ctx.model, tiny_ctx.sample, tiny_ctx.prepared, tiny_ctx.trace, tiny_ctx.regions, "mean-fill")
    ours = single_region_effects(ctx.model, ctx.prepared, ctx.trace, ctx.regions, "mean-fill")
    np.testing.assert_allclose(load_method("captum_ablation").attribute(ctx), ours, atol=1e-4)


def test_random_is_seeded_per_sample():
    model = AdditiveModel(np.ones((2, 16)), [1, 1])
    from vattr_bench.types import Sample

    s = Sample("a", "math", model.prepared.image, "q")
    ctx = AttributionContext(model, s, model.prepared, model.trace, one_token_per_region(16), seed=3)
    assert np.array_equal(load_method("random").attribute(ctx), load_method("random").attribute(ctx))


def test_the_shipped_example_plugin_runs(tiny_ctx):
    from pathlib import Path

    plugin = Path(__file__).parents[1] / "submissions" / "example_method.py"
    method = load_method(f"{plugin}:MaxHeadAttention")
    scores = method.attribute(tiny_ctx)
    assert method.name == "max_head_attention" and scores.shape == (tiny_ctx.n_spans, tiny_ctx.regions.k)
    assert np.all(scores >= 0) and np.all(scores.sum(1) <= 1 + 1e-5)  # one head's attention mass (float32)
