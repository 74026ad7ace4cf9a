import numpy as np
import pytest

from fake_model import AdditiveModel
from vattr_bench.amortized import LinearEstimator, span_region_features, train_estimator
from vattr_bench.methods import AttributionContext, load_method
from vattr_bench.regions import make_regions, random_subsets
from vattr_bench.types import Span


def test_pooling_is_mean_over_span_tokens_and_sum_or_mean_over_region_tokens():
    attn = np.zeros((2, 1, 3, 4))  # L=2, H=1, T=3 trace tokens, N=4 visual tokens
    attn[0, 0] = [[0.1, 0.2, 0.0, 0.0], [0.3, 0.0, 0.0, 0.4], [0.0, 0.0, 0.5, 0.0]]
    attn[1, 0] = 1.0
    spans = [Span(0, 2, "a"), Span(2, 3, "b")]
    regions = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    f = span_region_features(attn, spans, regions, "sum")
    assert f.shape == (2, 2, 2)
    # span a, region 0, layer 0: mean over tokens (0.1+0.2, 0.3+0) = 0.3
    assert f[0, 0, 0] == pytest.approx(0.3) and f[0, 1, 0] == pytest.approx(0.2) and f[1, 1, 0] == pytest.approx(0.5)
    assert f[0, 0, 1] == pytest.approx(2.0)  # layer 1: all ones, summed over 2 tokens
    assert span_region_features(attn, spans, regions, "mean")[0, 0, 0] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="unknown region pooling"):
        span_region_features(attn, spans, regions, "max")


def test_pearson_training_recovers_a_linear_truth_up_to_scale():
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=6)
    examples = []
    for _ in range(30):
        feats = rng.random((3, 8, 6))
        masks = random_subsets(8, 32, seed=int(rng.integers(1 << 30)))
        examples.append({"features": feats, "masks": masks, "subset_effects": masks @ (feats @ w_true).T})
    w = train_estimator(examples, epochs=400)
    feats = rng.random((50, 6))
    assert np.corrcoef(feats @ w, feats @ w_true)[0, 1] > 0.99


def test_estimator_file_round_trip_and_mismatch(tmp_path):
    est = LinearEstimator(np.arange(4.0), 0.0, {"model": "m", "num_layers": 2, "num_heads": 2, "regions": "grid",
                                                "ablation": "knockout", "region_pool": "sum"})
    est.save(tmp_path / "e.json")
    again = LinearEstimator.load(tmp_path / "e.json", {"model": "m", "num_layers": 2, "regions": "grid"})
    assert np.array_equal(again.weights, est.weights)
    with pytest.raises(ValueError, match="regions: trained 'grid', now 'superpixel'"):
        LinearEstimator.load(tmp_path / "e.json", {"model": "m", "regions": "superpixel"})
    with pytest.raises(FileNotFoundError, match="train-estimator"):
        LinearEstimator.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="features have 3 dims"):
        est.predict(np.zeros((1, 2, 3)))


def test_shipped_estimator_refuses_another_protocol(tiny):
    from vattr_bench.benchmarks import synthetic_sample

    s = synthetic_sample("math", 0)
    prepared = tiny.prepare(s.image, s.prompt)
    trace = tiny.generate(prepared, max_new_tokens=64)
    grid, _ = make_regions("grid", tiny, prepared, k=16)
    ctx = AttributionContext(tiny, s, prepared, trace, grid, "knockout")
    with pytest.raises(ValueError, match="regions: trained 'feature-ward', now 'grid'"):
        load_method("amortized").attribute(ctx)
    ward, _ = make_regions("feature-ward", tiny, prepared, k=16)
    ok = load_method("amortized").attribute(AttributionContext(tiny, s, prepared, trace, ward, "knockout"))
    assert ok.shape == (len(trace.spans), ward.k) and np.all(np.isfinite(ok))
