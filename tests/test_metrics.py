import numpy as np
import pytest

from fake_model import AdditiveModel, one_token_per_region
from vattr_bench.methods import AttributionContext, load_method
from vattr_bench.metrics import deletion_insertion_auc, lds, pearson_per_span, pointing_game, topk_drop
from vattr_bench.regions import random_subsets, single_region_effects, subset_effects
from vattr_bench.types import EvidenceStep, Regions, Sample, Span, Trace

RNG = np.random.default_rng(0)
K = 8
W = RNG.random((3, K)) ** 3  # three spans, each relying on a few of 8 regions


@pytest.fixture
def ctx():
    model = AdditiveModel(W, [2, 3, 1])
    sample = Sample("s", "math", model.prepared.image, "q")
    return AttributionContext(model, sample, model.prepared, model.trace, one_token_per_region(K), "knockout")


def test_ablation_ground_truth_is_exact_on_an_additive_model(ctx):
    np.testing.assert_allclose(single_region_effects(ctx.model, ctx.prepared, ctx.trace, ctx.regions), W, atol=1e-12)
    masks = random_subsets(K, 32, seed=1)
    assert masks.any(1).all() and (~masks).any(1).all()
    np.testing.assert_allclose(subset_effects(ctx.model, ctx.prepared, ctx.trace, ctx.regions, masks), masks @ W.T, atol=1e-12)
    assert np.allclose(load_method("ablation").attribute(ctx), W)


def test_correlations_on_known_cases():
    effects = np.array([[1.0, 2, 3, 4], [4, 3, 2, 1], [1, 1, 1, 1]])
    np.testing.assert_allclose(pearson_per_span(2 * effects + 5, effects)[:2], [1, 1])
    assert pearson_per_span(-effects, effects)[0] == pytest.approx(-1)
    assert np.isnan(pearson_per_span(effects, effects)[2])  # a constant span has no correlation
    masks = random_subsets(4, 40, seed=0)
    np.testing.assert_allclose(lds(effects[:2], masks, masks @ effects[:2].T), [1, 1])  # additive truth: LDS 1
    assert lds(-effects[:2], masks, masks @ effects[:2].T)[0] == pytest.approx(-1)


def test_deletion_insertion_and_topk_prefer_the_true_order(ctx):
    deletion, insertion = deletion_insertion_auc(ctx, W)
    rev_deletion, rev_insertion = deletion_insertion_auc(ctx, -W)
    assert np.all(deletion < rev_deletion) and np.all(insertion > rev_insertion)
    assert np.all((deletion >= 0) & (deletion <= 1) & (insertion >= 0) & (insertion <= 1))
    np.testing.assert_allclose(topk_drop(ctx, W), np.sort(W, axis=1)[:, -5:].sum(1))
    assert np.all(topk_drop(ctx, W) >= topk_drop(ctx, -W))


def test_pointing_game_hits_only_the_evidence_box():
    masks = np.zeros((2, 64, 64), bool)
    masks[0, :32] = True   # top half
    masks[1, 32:] = True   # bottom half
    regions = Regions(masks, np.eye(2, dtype=bool), "test", {})
    spans = [Span(0, 2, "a ."), Span(2, 4, "b ."), Span(4, 5, "7", is_answer=True)]
    trace = Trace(list(range(5)), "", spans, np.zeros(5), "7")
    sample = Sample("s", "math", __import__("PIL.Image").Image.new("RGB", (64, 64)), "q", "7",
                    [EvidenceStep("a", (0, 0, 20, 20)), EvidenceStep("b", (10, 40, 30, 60))])
    scores = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = pointing_game(scores, trace, sample, regions)
    assert out[0] == 1 and out[1] == 0 and np.isnan(out[2])  # the answer span has no box


def test_partial_correlation_removes_region_size():
    from vattr_bench.metrics import partial_pearson_per_span

    sizes = np.array([1.0, 2, 3, 4, 5, 6])
    signal = np.array([1.0, -1, 1, -1, 1, -1])
    effects = np.stack([3 * sizes + signal, 3 * sizes + signal])
    # a size prior correlates strongly with Δ, but knows nothing once size is controlled for
    assert pearson_per_span(sizes[None], effects[:1])[0] > 0.9
    assert np.isnan(partial_pearson_per_span(sizes[None] * 2 + 1, effects[:1], sizes)[0])
    # a method that knows the signal beyond size keeps a perfect partial correlation; its opposite, −1
    np.testing.assert_allclose(partial_pearson_per_span(np.stack([signal, -signal + sizes]), effects, sizes), [1, -1])
    # equal sizes: partial is plain Pearson
    flat = np.ones(6)
    scores = RNG.random((2, 6))
    np.testing.assert_allclose(partial_pearson_per_span(scores, effects, flat), pearson_per_span(scores, effects))


def test_span_scores_cover_the_registry_and_count_flat_scores_as_zero(ctx):
    from vattr_bench.metrics import METRICS, SPAN_METRICS, score_spans

    masks = random_subsets(K, 16, seed=2)
    truth = subset_effects(ctx.model, ctx.prepared, ctx.trace, ctx.regions, masks)
    scores = W.copy()
    scores[1] = 0.5  # flat on span 1: no ranking
    scored = score_spans(ctx, scores, W, masks, truth)
    assert list(scored.values) == list(SPAN_METRICS) and set(SPAN_METRICS) <= set(METRICS)
    assert scored.method_undefined.tolist() == [False, True, False] and not scored.truth_undefined.any()
    assert scored.values["r2"][1] == 0 and scored.values["pearson"][1] == 0 and scored.values["r2_signed"][1] == 0
    assert scored.values["r2"][0] == pytest.approx(1) and scored.values["r2_signed"][0] == pytest.approx(1)
    # r2_signed keeps the sign that r2 loses
    inverted = score_spans(ctx, -W, W, masks, truth)
    assert inverted.values["r2"][0] == pytest.approx(1) and inverted.values["r2_signed"][0] == pytest.approx(-1)
    # a truth that is flat on a span leaves it out for every method alike (NaN), whatever the scores
    flat_truth = W.copy()
    flat_truth[2] = 0.0
    scored = score_spans(ctx, scores, flat_truth, masks, truth)
    assert scored.truth_undefined.tolist() == [False, False, True] and np.isnan(scored.values["r2"][2])


def test_a_metric_added_to_the_registry_is_scored(ctx, monkeypatch):
    """A span metric is one registry entry whose compute reads the sample's evidence: added there, every method
    is scored on it, beside the others, with no other change."""
    from vattr_bench.metrics import METRICS, Metric, registry, scoring, score_spans

    top_is_largest = Metric("top_is_largest", True, "span", (0.0, 1.0), "1 if the top-scored region has the largest Δ",
                            lambda e: (e.scores.argmax(1) == e.effects.argmax(1)).astype(float))
    monkeypatch.setitem(METRICS, top_is_largest.name, top_is_largest)
    monkeypatch.setattr(scoring, "SPAN_METRICS", (*registry.SPAN_METRICS, top_is_largest.name))
    masks = random_subsets(K, 16, seed=2)
    truth = subset_effects(ctx.model, ctx.prepared, ctx.trace, ctx.regions, masks)
    scores = W.copy()
    scores[1] = -W[1]
    scored = score_spans(ctx, scores, W, masks, truth)
    assert scored.values["top_is_largest"].tolist() == [1.0, 0.0, 1.0]
    assert scored.values["r2"][0] == pytest.approx(1)  # the registry's own metrics alongside


def test_random_subsets_are_drawn_per_sample():
    from vattr_bench.regions import subset_seed

    a, b = (random_subsets(16, 32, subset_seed(0, name)) for name in ("math-test-0-1", "math-test-0-2"))
    assert not np.array_equal(a, b)
    assert np.array_equal(a, random_subsets(16, 32, subset_seed(0, "math-test-0-1")))
    assert not np.array_equal(a, random_subsets(16, 32, subset_seed(1, "math-test-0-1")))


def test_constant_and_size_only_scores_have_no_partial_correlation():
    from vattr_bench.metrics import partial_pearson_per_span

    sizes = np.array([3.0, 7, 1, 12, 5, 9, 2, 4])
    effects = RNG.random((3, 8))
    # rounding leaves ~1e-16 of a constant row after the projection: still no signal beyond size
    assert np.isnan(partial_pearson_per_span(np.ones((3, 8)), effects, sizes)).all()
    assert np.isnan(partial_pearson_per_span(np.tile(sizes * 0.37, (3, 1)), effects, sizes)).all()
