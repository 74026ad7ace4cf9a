import numpy as np
import pytest
import torch

from logs import kept_logs
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


def test_signed_direct_logit_features_weigh_a_token_by_its_sign():
    """|x| + β·x per token, x = Σ_{n∈k} a_tn u_tᵀW_O^h v_n / rms_t, then the mean over the span's tokens: a token
    whose read lowers the logit (x < 0) counts 1 − β, one that raises it 1 + β; β = 0 is direct-logit."""
    attn = np.array([[[[0.2, 0.2], [0.1, 0.1]]]])  # L = H = 1, T = 2, N = 2
    logit_values = np.array([[[[1.0, 1.0], [-1.0, -1.0]]]])  # x = +0.4 at token 0, -0.2 at token 1
    spans, one_region = [Span(0, 2, "a")], np.ones((1, 2), dtype=bool)
    for beta, expected in ((0.0, 0.3), (0.5, 0.35), (1.0, 0.4), (-1.0, 0.2)):
        f = span_region_features(attn, spans, one_region, logit_values=logit_values, token_scales=np.ones(2),
                                 sign_weight=beta)
        assert f[0, 0, 0] == pytest.approx(expected)
    halved = span_region_features(attn, spans, one_region, logit_values=logit_values, token_scales=np.array([1.0, 0.5]),
                                  sign_weight=0.5)
    assert halved[0, 0, 0] == pytest.approx((0.6 + 0.05) / 2)  # each token's 1/rms scales its x before |x| + βx


def _planted_examples(w_true, n, rng, family="math"):
    """Examples whose ablation effects are exactly linear in the features: Δ_k(S) = w_true · f_{S,k}."""
    examples = []
    for _ in range(n):
        feats = rng.random((3, 8, len(w_true)))
        masks = random_subsets(8, 32, seed=int(rng.integers(1 << 30)))
        singles = feats @ w_true  # (S, K)
        examples.append({"family": family, "features": feats, "masks": masks, "subset_effects": masks @ singles.T,
                         "single_effects": singles})
    return examples


@pytest.mark.parametrize("targets", ["subsets", "singles", "both"])
def test_pearson_training_recovers_a_linear_truth_up_to_scale(targets):
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=6)
    w = train_estimator(_planted_examples(w_true, 30, rng), epochs=400, targets=targets)
    feats = rng.random((50, 6))
    assert np.corrcoef(feats @ w, feats @ w_true)[0, 1] > 0.99
    with pytest.raises(ValueError, match="unknown estimator targets"):
        train_estimator(_planted_examples(w_true, 2, rng), targets="pairs")


@pytest.mark.slow  # 69 s on a loaded 2-core machine
def test_head_selection_keeps_the_heads_the_effects_depend_on():
    from vattr_bench.amortized.estimator import select_heads

    rng = np.random.default_rng(2)
    w_true = np.zeros(16)
    w_true[[3, 9, 12]] = [1.0, -0.6, 0.4]  # the effects read three of sixteen heads
    examples = _planted_examples(w_true, 30, rng)
    chosen = select_heads(examples, 3)
    assert chosen.tolist() == [3, 9, 12]
    # train-estimator hands over the all-heads fit it made anyway: the same selection, one fit fewer
    assert select_heads(examples, 3, all_heads_fit=train_estimator(examples)).tolist() == [3, 9, 12]
    w = train_estimator(examples, targets="both", heads=chosen)
    assert w.shape == (16,) and np.count_nonzero(w) == 3
    feats = rng.random((50, 16))
    assert np.corrcoef(feats @ w, feats @ w_true)[0, 1] > 0.99
    with pytest.raises(ValueError, match="cannot keep 17 of 16 heads"):
        select_heads(examples, 17)


def test_cross_family_transfer_is_scored_on_the_held_out_family():
    from vattr_bench.amortized.train import format_transfer, transfer_scores

    rng = np.random.default_rng(1)
    shared = rng.normal(size=6)
    # three families share one truth, a fourth has its own: only the fourth should lose in transfer
    train = [ex for fam in ("a", "b", "c") for ex in _planted_examples(shared, 12, rng, fam)]
    odd = rng.normal(size=6)
    train += _planted_examples(odd, 12, rng, "d")
    held = [ex for fam in ("a", "b", "c") for ex in _planted_examples(shared, 4, rng, fam)] + _planted_examples(odd, 4, rng, "d")
    table = transfer_scores(train, held)
    assert set(table) == {"a", "b", "c", "d"}
    assert all(table[f]["retained_r2"] > 0.85 for f in "abc")
    assert table["d"]["transfer_r2"] < table["a"]["transfer_r2"] - 0.5
    assert "| d |" in format_transfer(table)


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
    for weight in (None, 1.5, "0.5"):  # signed direct-logit features say how much of the sign they keep
        meta = {"features": "direct-logit-signed", **({} if weight is None else {"sign_weight": weight})}
        LinearEstimator(np.arange(4.0), 0.0, meta).save(tmp_path / "signed.json")
        with pytest.raises(ValueError, match=f"need a 'sign_weight' between -1 and 1, got {weight!r}"):
            LinearEstimator.load(tmp_path / "signed.json")
    with pytest.raises(ValueError, match="features have 3 dims"):
        est.predict(np.zeros((1, 2, 3)))
    # an estimator using some heads: listed in meta, every other weight 0, or loading says what is wrong
    for heads, weights, problem in (([0, 2], [1.0, 0.0, -2.0, 0.0], None),
                                    ([2, 0], [1.0, 0.0, -2.0, 0.0], "sorted distinct indices below 4"),
                                    ([0, 4], [1.0, 0.0, 0.0, 0.0], "sorted distinct indices below 4"),
                                    ([0, 2], [1.0, 0.5, -2.0, 0.0], "1 weights outside its 'heads' are not 0")):
        LinearEstimator(np.array(weights), 0.0, {"heads": heads}).save(tmp_path / "h.json")
        if problem is None:
            assert LinearEstimator.load(tmp_path / "h.json").meta["heads"] == heads
        else:
            with pytest.raises(ValueError, match=problem):
                LinearEstimator.load(tmp_path / "h.json")


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


@pytest.mark.slow  # 190 s on a loaded 2-core machine
def test_train_estimator_command_writes_a_loadable_estimator(tiny, tmp_path, capsys):
    """`vattr-bench train-estimator` end to end on a few samples: held-out scores printed, the file records
    what it was trained under, and `amortized` runs with it."""
    from vattr_bench.amortized import train
    from vattr_bench.benchmarks import synthetic_sample
    from vattr_bench.cli import main
    from vattr_bench.methods.amortized import Amortized

    out = tmp_path / "e.json"
    examples = ["--cache-dir", str(tmp_path / "examples")]
    assert main(["train-estimator", "--benchmark", "math", "--n-train", "4", "--output", str(out), *examples]) == 0
    out_text = capsys.readouterr().out
    assert "held-out (1 samples" in out_text and "sign weight inside the training samples" in out_text
    est = LinearEstimator.load(out)
    # by default β is the one that fits best inside the training samples, with what each scored there
    choice = {float(b): v["r2"] + v["lds"] for b, v in est.meta["sign_weight_choice"].items()}
    assert est.meta["features"] == "direct-logit-signed" and set(choice) == set(train.SIGN_WEIGHTS)
    assert est.meta["sign_weight"] == max(choice, key=choice.get)
    assert est.meta["n_train"] == 3 and len(est.weights) == 64
    assert np.isfinite(est.weights).all() and {"r2", "lds"} <= set(est.meta["heldout"])
    model = tiny
    s = synthetic_sample("math", 0)
    prepared = model.prepare(s.image, s.prompt)
    regions, _ = make_regions("feature-ward", model, prepared, k=16)
    ctx = AttributionContext(model, s, prepared, model.generate(prepared, max_new_tokens=128), regions, "knockout")
    scores = Amortized(str(out)).attribute(ctx)
    assert scores.shape == (len(ctx.trace.spans), 16) and np.isfinite(scores).all()
    # an estimator of 8 heads chosen on the training samples: the others' weights 0, all-heads scores kept beside
    few = tmp_path / "few.json"
    assert main(["train-estimator", "--benchmark", "math", "--n-train", "4", "--heads", "8", "--output", str(few),
                 *examples]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 samples' examples read back" in out  # the first command's samples, not collected again
    assert "held-out with all 64 heads" in out and "8 heads chosen on the training samples" in out
    pruned = LinearEstimator.load(few)
    assert len(pruned.meta["heads"]) == 8 and np.flatnonzero(pruned.weights).tolist() == pruned.meta["heads"]
    assert {"r2", "lds"} <= set(pruned.meta["heldout_all_heads"])
    method = Amortized(str(few))
    assert np.isfinite(method.attribute(ctx)).all()
    (used,) = method.settings()["estimators"]  # what evaluate records in results.json
    assert used["path"] == str(few) and used["heads"] == 8 and used["features"] == "direct-logit-signed"
    assert main(["train-estimator", "--benchmark", "math", "--n-train", "4", "--heads", "64", "--output", str(few),
                 *examples]) == 2
    assert "--heads 64: choose from 1 to 63" in capsys.readouterr().err
    # the sign weight is the estimator's: the examples keep |x| and x apart, so any β fits them without collecting
    other = tmp_path / "other.json"
    assert main(["train-estimator", "--benchmark", "math", "--n-train", "4", "--sign-weight", "0.5",
                 "--output", str(other), *examples]) == 0
    assert "4 of 4 samples' examples read back" in capsys.readouterr().out
    assert LinearEstimator.load(other).meta["sign_weight"] == 0.5
    assert np.isfinite(Amortized(str(other)).attribute(ctx)).all()
    assert "sign_weight_choice" not in LinearEstimator.load(other).meta  # a β given is not chosen
    with pytest.raises(SystemExit):
        main(["train-estimator", "--sign-weight", "half", "--output", str(other)])
    assert "a number between -1 and 1, or 'auto'; got 'half'" in capsys.readouterr().err
    assert main(["train-estimator", "--benchmark", "math", "--n-train", "2", "--features", "direct-logit",
                 "--sign-weight", "0.5", "--output", str(other), *examples]) == 2
    assert "a sign weight is for direct-logit-signed features, not direct-logit" in capsys.readouterr().err


@pytest.mark.slow  # 67 s on a loaded 2-core machine
def test_collected_examples_survive_a_killed_run(tiny, tmp_path, monkeypatch):
    """Each sample's example is on disk once collected: a later run reads it back (the same arrays), and
    collects again only what is missing or torn."""
    from vattr_bench.amortized import train

    def collect(cache):  # the examples, and the last line logged
        with kept_logs() as logs:
            examples = train.collect_examples(tiny, ["math", "science"], 2, features="logit-weighted", cache_dir=cache)
        return examples, logs[-1] if logs else ""

    cache = tmp_path / "examples"
    first, _ = collect(cache)
    files = sorted(cache.glob("*.npz"))
    assert len(first) == 4 and len(files) == 4
    collected = []
    real = train.collect_example
    monkeypatch.setattr(train, "collect_example", lambda model, sample, *a: collected.append(sample.id) or real(model, sample, *a))
    again, said = collect(cache)
    assert collected == [] and "4 of 4 samples' examples read back" in said
    for a, b in zip(first, again):
        assert a["family"] == b["family"] and all(np.array_equal(a[n], b[n]) for n in train.ExampleCache.ARRAYS)
    files[0].write_bytes(files[0].read_bytes()[:100])  # a kill mid-write (the real writes go through a rename)
    third, said = collect(cache)
    assert len(collected) == 1 and "3 of 4" in said
    assert all(np.array_equal(a["features"], b["features"]) for a, b in zip(first, third))
    # anything the example depends on names another file: other features are collected anew
    train.collect_examples(tiny, ["math"], 1, features="attention", cache_dir=cache)
    assert len(collected) == 2 and len(list(cache.glob("*.npz"))) == 5


def test_amortized_method_equals_the_estimator_on_reference_features(tiny, tmp_path):
    """The method scores span by span off one captured pass (the streaming worker's computation); the numbers
    are the estimator applied to the defining features: eager attention pooled per (span, region), weighted
    by logit or value terms computed the long way (each head's full write into the residual stream; the final
    norm's 1/rms off the last layer's output). An adapter that cannot capture gets value-weighted scores
    through its attention_to_visual, and a clear error for the logit kinds; a model whose final norm is no
    RMSNorm, a clear error for direct-logit ones."""
    from test_streaming import logit_values_the_long_way, token_scales_the_long_way, value_norms_the_long_way
    from vattr_bench.amortized.attributor import signed_feature_parts
    from vattr_bench.benchmarks import synthetic_sample
    from vattr_bench.methods.amortized import Amortized

    s = synthetic_sample("document", 2)
    prepared = tiny.prepare(s.image, s.prompt)
    trace = tiny.generate(prepared, max_new_tokens=128)
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16)
    ctx = AttributionContext(tiny, s, prepared, trace, regions, "knockout")
    shipped = Amortized().estimator_for(ctx)
    eager = tiny.attention_to_visual(prepared, trace.token_ids, eager=True)
    logit_values = logit_values_the_long_way(tiny, prepared, trace.token_ids)
    token_scales = token_scales_the_long_way(tiny, prepared, trace.token_ids)
    # direct-logit-signed by its definition: x_lhtk = Σ_{n∈k} a·u_tᵀW_O^h v_n / rms_t, |x| + 0.5x, mean over each span
    x = np.einsum("lhtn,kn->tklh", eager * logit_values, regions.token_matrix.astype(np.float64)) * token_scales[:, None, None, None]
    signed = np.stack([(np.abs(x) + 0.5 * x)[sp.start:sp.end].mean(0) for sp in trace.spans]).reshape(len(trace.spans), regions.k, -1)
    reference = {"logit-weighted": span_region_features(eager, trace.spans, regions.token_matrix, "sum",
                                                        logit_values=logit_values),
                 "direct-logit": span_region_features(eager, trace.spans, regions.token_matrix, "sum",
                                                      logit_values=logit_values, token_scales=token_scales),
                 "direct-logit-signed": signed,
                 "value-weighted": span_region_features(eager, trace.spans, regions.token_matrix, "sum",
                                                        value_norms_the_long_way(tiny, prepared))}
    # train-estimator's kept parts (|x| and x apart, one pass) give the same features at any β
    magnitude, signed_part = signed_feature_parts(tiny, prepared, trace, regions.token_matrix)
    np.testing.assert_allclose(magnitude + 0.5 * signed_part, signed, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(magnitude, reference["direct-logit"], rtol=1e-4, atol=1e-5)
    methods = {}
    for kind, features in reference.items():
        meta = dict(shipped.meta, features=kind, **({"sign_weight": 0.5} if kind == "direct-logit-signed" else {}))
        LinearEstimator(shipped.weights, 0.0, meta).save(tmp_path / f"{kind}.json")
        methods[kind] = Amortized(str(tmp_path / f"{kind}.json"))
        scores = methods[kind].attribute(ctx)
        assert len(trace.spans) > 1 and scores.shape == (len(trace.spans), regions.k)
        np.testing.assert_allclose(scores, features @ shipped.weights, rtol=1e-4, atol=1e-5)

    class NoCapture:  # the adapter contract's optional parts left out
        def __getattr__(self, name):
            return getattr(tiny, name)

        def capture_visual_attention(self, *args, **kwargs):
            raise NotImplementedError("no capture")

    ctx.model = NoCapture()
    np.testing.assert_allclose(methods["value-weighted"].attribute(ctx), reference["value-weighted"] @ shipped.weights,
                               rtol=1e-4, atol=1e-5)
    for kind in ("logit-weighted", "direct-logit", "direct-logit-signed"):
        with pytest.raises(NotImplementedError, match=f"{kind} features need"):
            methods[kind].attribute(ctx)

    ctx.model = tiny
    decoder = tiny.decoder
    rms_norm = decoder.norm
    decoder.norm = torch.nn.LayerNorm(rms_norm.weight.shape[0])
    try:
        with pytest.raises(ValueError, match="direct-logit features need the decoder's final RMSNorm; LayerNorm"):
            methods["direct-logit"].attribute(ctx)
    finally:
        decoder.norm = rms_norm
