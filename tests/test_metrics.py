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
