"""Probes behind the account of the amortized estimator's ceiling (docs/estimator.md), on split "estimator" only
(never the test samples): which Pearson targets to fit, whether more data or other pooling would help.

    python experiments/estimator_probes.py [--n 1000] [--model vattr-tiny]

Collects, once, the per-token attention rows and the ablation ground truth of n samples (the same
samples, traces, regions and masks `vattr-bench train-estimator --n-train n` uses), holds out 20% the
same way, then prints held-out r2 / LDS for: each training target; the estimator fitted on the held-out
samples themselves (the linear map's capacity on these features); pooling variants (one of them each
visual token's attention weighted by its value norm ‖W_O^h v_n‖, and the logit-weighted features, with
and without the magnitude per token, and with the span's tokens weighted by 1 − p(y_t) or its square
root instead of averaged — the share of a token's log-prob that a logit change can still move, since a
knocked-out region can only lower an almost certain token's log-prob by little); feature transforms;
and the estimator restricted to random subsets of the L·H heads (how r2 moves with the estimator's
capacity — the model's head count is the lever `python -m vattr_bench.models.tiny.train --num-heads` exposes); and the shipped
(logit-weighted) features restricted to heads chosen on the training samples (`select_heads`: what an
estimator that may use only m heads keeps — the streaming worker's cost grows with the heads used);
and the logit-weighted features read along other directions or scaled otherwise (`readout_variants`); and
the shipped direct-logit features side by side with another kind, 2·L·H features in one linear map (what an
estimator that read each head both ways could gain), and the direct-logit features with each token's signed
contribution x mixed into its magnitude, |x| + beta·x, one feature a head again ("combined").

    python experiments/estimator_probes.py --probes heads   # only that group
"""
import argparse

import numpy as np
import torch
from tqdm.auto import tqdm

from vattr_bench.amortized import capture_trace, span_region_features
from vattr_bench.amortized.features import logit_weighted_per_token, region_pool_matrix, span_token_means
from vattr_bench.amortized.estimator import select_heads, train_estimator
from vattr_bench.amortized.train import heldout_scores, split_heldout
from vattr_bench.benchmarks import resolve_families, synthetic_sample
from vattr_bench.models import load_model
from vattr_bench.models.adapter import CaptureOptions
from vattr_bench.regions import ground_truth, make_regions


TOKEN_WEIGHTS = {"logit-weighted, tokens by 1 - p": lambda p: 1 - p,
                 "logit-weighted, tokens by sqrt(1 - p)": lambda p: np.sqrt(1 - p)}  # p = p(y_t), the model's


def pooled(attention, spans, token_matrix, variant, vnorm=None, logit_values=None, logprobs=None):
    """(S, K, L·H) features under a pooling variant; "mean" is plain attention (span_region_features)."""
    if variant == "logit-weighted":  # the shipped estimator's features
        return span_region_features(attention, spans, token_matrix, "sum", logit_values=logit_values)
    if variant in TOKEN_WEIGHTS:  # the shipped features with a weighted mean over the span's tokens
        per_token = logit_weighted_per_token(attention, logit_values, region_pool_matrix(token_matrix)).astype(np.float64)
        w = TOKEN_WEIGHTS[variant](np.exp(np.asarray(logprobs, dtype=np.float64))) + 1e-12  # (T,)
        feats = [np.einsum("lhtk,t->klh", per_token[:, :, s.start:s.end], w[s.start:s.end] / w[s.start:s.end].sum())
                 for s in spans]
        return np.stack(feats).reshape(len(spans), token_matrix.shape[0], -1)
    if variant == "logit-weighted, signed":  # the same without the magnitude per token
        per_token = np.einsum("lhtn,kn->tklh", attention * logit_values.astype(np.float64), token_matrix.astype(np.float64))
        return np.stack([per_token[s.start:s.end].mean(0) for s in spans]).reshape(len(spans), token_matrix.shape[0], -1)
    per_span = []
    for s in spans:
        a = attention[:, :, s.start:s.end].astype(np.float64)  # (L, H, n, N)
        if variant == "value-weighted":  # each visual token's attention times its value norm
            per_span.append(a.mean(2) * vnorm)
        elif variant == "max":  # max over the span's tokens instead of the mean
            per_span.append(a.max(2))
        elif variant == "visual-mass":  # tokens weighted by how much each head looks at the image there
            w = a.sum(-1, keepdims=True)
            per_span.append((a * w).sum(2) / (w.sum(2) + 1e-9))
        elif variant == "no-last-token":  # drop the sentence's closing token
            per_span.append(a[:, :, :-1].mean(2) if a.shape[2] > 1 else a.mean(2))
        else:
            per_span.append(a.mean(2))
    feats = np.einsum("slhn,kn->sklh", np.stack(per_span), token_matrix.astype(np.float64))
    return feats.reshape(len(spans), token_matrix.shape[0], -1)


READOUTS = ("centered", "expected competitor", "runner-up", "knockout, renormalised", "knockout, renormalised, 1 / (1 - A)",
            "shipped / final norm's rms", "shipped / (1 - A)")
SIGN_MIXES = (-0.5, -0.25, 0.25, 0.5, 1.0)  # direct-logit per token |x| + beta·x: one feature a head, the sign kept in part
SIGNED = ("signed / final norm's rms", *(f"(abs(x) {b:+g}·x) / final norm's rms" for b in SIGN_MIXES))


def readout_variants(model, prepared, trace, token_matrix) -> dict:
    """(S, K, L·H) features for the "readout" probes: the shipped |Σ_{n∈k} a_tn u_tᵀW_O^h v_n| with u_t (y_t's
    unembedding row) replaced by
      centered             u_y − mean_v u_v: what log-softmax sees (a shift of every logit is no change);
      expected competitor  u_y − E_{v≠y} u_v under the model's p_t: the direction of log-odds(y_t);
      runner-up            u_y − u_v of the likeliest other token;
    or the exact direct effect of knocking region k out of head (l,h)'s attention at query t, the head's
    output o_t moving to (o_t − Σ_{n∈k} a_tn v_n) / (1 − A_tk), A_tk = Σ_{n∈k} a_tn:
      knockout, renormalised   |LV_tk − A_tk u_tᵀW_O^h o_t| (LV: the shipped signed sum), and over (1 − A_tk);
    or the shipped per-token magnitude over the final norm's rms of the residual at t (the scale the logit
    lens leaves out: the head's exact direct contribution to the logit), or over (1 − A_tk).
    For a Llama-style decoder (o_proj, a final RMSNorm with variance_epsilon), vattr-tiny's."""
    decoder, L, H = model.decoder, model.num_layers, model.num_heads
    ids = list(trace.token_ids)
    T, rows = len(ids), slice(prepared.prompt_length - 1, prepared.prompt_length - 1 + len(trace.token_ids))
    seen = {}
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(l, a[0]))
             for l, layer in enumerate(decoder.layers)]
    hooks.append(decoder.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("residual", a[0])))
    try:
        with model.capture_visual_attention(prepared, CaptureOptions(logit_readout=True)) as capture, torch.no_grad():
            logits = model.forward(prepared, ids).logits[0, rows].double().numpy()  # (T, V)
    finally:
        for h in hooks:
            h.remove()
    attention = capture.attention(T).astype(np.float64)  # (L, H, T, N)
    values = np.repeat(np.asarray(capture.visual_values(), dtype=np.float64), capture.query_groups, axis=1)  # (L, H, N, d)
    outputs = np.stack([seen[l][0, rows].double().numpy().reshape(T, H, -1) for l in range(L)])  # (L, T, H, d)
    residual = seen["residual"][0, rows].double().numpy()
    rms = np.sqrt((residual ** 2).mean(-1) + decoder.norm.variance_epsilon)  # (T,)
    unembed = model.model.get_output_embeddings().weight.detach().double().numpy()  # (V, hidden)
    gain = decoder.norm.weight.detach().double().numpy()
    w_o = np.concatenate([layer.self_attn.o_proj.weight.detach().double().numpy() for layer in decoder.layers], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    others = p.copy()
    others[np.arange(T), ids] = 0
    u_y = unembed[ids]
    directions = {"shipped": u_y, "centered": u_y - unembed.mean(0),
                  "expected competitor": u_y - (others / others.sum(1, keepdims=True)) @ unembed,
                  "runner-up": u_y - unembed[others.argmax(1)]}
    pool = region_pool_matrix(token_matrix)  # (K, N)
    A = np.einsum("lhtn,kn->lhtk", attention, pool)
    per_token = {}
    for name, u in directions.items():
        g = ((u * gain) @ w_o).reshape(T, L, H, -1)  # W_O^hᵀ(γ ⊙ u_t), per head
        LV = np.einsum("lhtn,kn->lhtk", attention * np.einsum("tlhd,lhnd->lhtn", g, values), pool)
        per_token[name] = np.abs(LV)
        if name == "shipped":
            head_output = np.einsum("tlhd,lthd->lht", g, outputs)[..., None]  # u_tᵀW_O^h o_t
            per_token["knockout, renormalised"] = np.abs(LV - A * head_output)
            per_token["knockout, renormalised, 1 / (1 - A)"] = per_token["knockout, renormalised"] / np.clip(1 - A, 1e-6, None)
            per_token["shipped / final norm's rms"] = np.abs(LV) / rms[:, None]
            per_token["shipped / (1 - A)"] = np.abs(LV) / np.clip(1 - A, 1e-6, None)
            per_token[SIGNED[0]] = LV / rms[:, None]
            for beta, name in zip(SIGN_MIXES, SIGNED[1:]):
                per_token[name] = (np.abs(LV) + beta * LV) / rms[:, None]
    return {name: span_token_means(x, trace.spans) for name, x in per_token.items() if name in READOUTS + SIGNED}


def five_folds(examples: list):
    """(fold, fitted on, held out) for each fifth of the examples held out in turn (seeded permutation)."""
    order = np.random.default_rng(0).permutation(len(examples))
    for fold in range(5):
        held_out = set(order[fold::5].tolist())
        yield (fold, [e for i, e in enumerate(examples) if i not in held_out],
               [e for i, e in enumerate(examples) if i in held_out])


TRANSFORMS = {"fraction-of-region-total": lambda f: f / (f.sum(1, keepdims=True) + 1e-9),
              "log": lambda f: np.log(f + 1e-4), "sqrt": np.sqrt}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--model", default="vattr-tiny")
    p.add_argument("--probes", default="all",
                   help="comma-separated: targets, capacity, pooling, transforms, heads, selected, readout, combined")
    a = p.parse_args()
    probes = {"targets", "capacity", "pooling", "transforms", "heads", "selected", "readout", "combined"} if a.probes == "all" \
        else set(a.probes.split(","))
    model = load_model(a.model)
    families = resolve_families("all")
    variants = ("mean", "max", "visual-mass", "no-last-token", "value-weighted", "logit-weighted", "logit-weighted, signed",
                *TOKEN_WEIGHTS)
    examples, certainty = [], []  # certainty: p(y_t) of every trace token
    for family in families:
        for i in tqdm(range(a.n // len(families)), desc=f"collect {family}"):
            sample = synthetic_sample(family, i, "estimator", 0)
            prepared = model.prepare(sample.image, sample.prompt)
            trace = model.generate(prepared, max_new_tokens=128)
            if not trace.spans:
                continue
            regions, _ = make_regions("feature-ward", model, prepared, k=16, sample=sample)
            truth = ground_truth(model, prepared, trace, regions, "knockout", 32, i)
            attention = model.attention_to_visual(prepared, trace.token_ids)
            ex = {"family": family, "masks": truth.masks, "subset_effects": truth.subset_effects,
                  "single_effects": truth.effects}
            vnorm = model.visual_value_norms(prepared)
            logit_values = capture_trace(model, prepared, trace.token_ids, logit_readout=True).logit_values(trace.token_ids)
            ex.update({v: pooled(attention, trace.spans, regions.token_matrix, v, vnorm, logit_values, trace.logprobs)
                       for v in variants})
            if {"readout", "combined"} & probes:
                ex.update(readout_variants(model, prepared, trace, regions.token_matrix))
            examples.append(ex)
            certainty.append(np.exp(trace.logprobs))
    train, held = split_heldout(examples, 0.2, 0)

    def view(exs, key="mean", transform=None):
        return [dict(e, features=transform(e[key]) if transform else e[key]) for e in exs]

    def scores(key="mean", transform=None, targets="both", fit_on=None, heads=None):
        w = train_estimator(view(fit_on if fit_on is not None else train, key, transform), targets=targets, heads=heads)
        return heldout_scores(w, view(held, key, transform))

    def report(label, draws=None, **kwargs):
        """One table row; with ``draws`` (a list of kwargs), the mean over them."""
        runs = [scores(**kwargs, **d) for d in (draws or [{}])]
        r2, lds = (float(np.mean([r[m] for r in runs])) for m in ("r2", "lds"))
        print(f"| {label} | {r2:.3f} | {lds:.3f} |", flush=True)

    quantiles = np.quantile(np.concatenate(certainty), [0.1, 0.5, 0.9])
    print(f"held-out: {len(held)} samples; trained on {len(train)}; the model's p(y_t) over all their trace tokens, "
          f"10% / 50% / 90% quantiles: {' / '.join(f'{q:.6f}' for q in quantiles)}\n")
    print("| probe | held-out r2 | held-out LDS |\n|---|---|---|")
    if "targets" in probes:
        for targets in ("subsets", "singles", "both"):
            report(f"targets {targets}", targets=targets)
    if "capacity" in probes:
        report("capacity: fitted on the held-out samples themselves", fit_on=held)
    if "pooling" in probes:
        for v in variants[1:]:
            report(f"pooling over span tokens: {v}", key=v)
    if "transforms" in probes:
        for name, fn in TRANSFORMS.items():
            report(f"features transformed: {name}", transform=fn)
    if "heads" in probes:
        n_heads = model.num_layers * model.num_heads
        rng = np.random.default_rng(0)
        for k in (4, 8, 16, 32):
            if k < n_heads:
                subsets = [np.sort(rng.choice(n_heads, k, replace=False)) for _ in range(5)]
                report(f"{k} of the {n_heads} heads (mean of 5 random subsets)",
                       draws=[{"transform": lambda f, c=c: f[..., c]} for c in subsets])
        report(f"all {n_heads} heads")
    if "selected" in probes:  # the shipped features, heads chosen on the training samples only
        n_heads, H = model.num_layers * model.num_heads, model.num_heads
        rng = np.random.default_rng(0)
        for k in (8, 16, 32):
            chosen = select_heads(view(train, "logit-weighted"), k)
            per_layer = np.bincount(chosen // H, minlength=model.num_layers)
            report(f"logit-weighted, {k} heads chosen on the training samples (per layer {per_layer.tolist()})",
                   key="logit-weighted", heads=chosen)
            report(f"logit-weighted, {k} random heads (mean of 5 subsets)", key="logit-weighted",
                   draws=[{"heads": np.sort(rng.choice(n_heads, k, replace=False))} for _ in range(5)])
        report(f"logit-weighted, all {n_heads} heads", key="logit-weighted")
    if "readout" in probes:
        for v in READOUTS:
            report(f"logit-weighted read otherwise: {v}", key=v)
        # the one that gained on the split above, on every fifth of the samples held out in turn
        for fold, fit_on, fold_held in five_folds(examples):
            row = []
            for key in ("logit-weighted", "shipped / final norm's rms"):
                w = train_estimator(view(fit_on, key))
                row.append(heldout_scores(w, view(fold_held, key)))
            print(f"| fold {fold + 1} of 5: logit-weighted → / final norm's rms | {row[0]['r2']:.3f} → {row[1]['r2']:.3f} | "
                  f"{row[0]['lds']:.3f} → {row[1]['lds']:.3f} |", flush=True)
    if "combined" in probes:  # the direct-logit features beside another kind, and with the sign kept in part
        shipped = "shipped / final norm's rms"
        report("direct-logit alone (L·H)", key=shipped)
        for other in ("mean", "value-weighted", "logit-weighted, signed", SIGNED[0]):
            for e in examples:  # in place: train and held hold these same dicts
                e["combined"] = np.concatenate([e[shipped], e[other]], -1)
            report(f"direct-logit beside {'plain attention' if other == 'mean' else other} (2·L·H)", key="combined")
        for name in SIGNED:  # one feature a head again, the sign of each token's direct contribution kept in part
            report(f"direct-logit read as {name} (L·H)", key=name)
        # beta chosen inside each fold's training samples (an inner 80/20 split), so that the fold's held-out
        # samples never took part in the choice: is the sign mix ahead of direct-logit when nothing is tuned on them?
        for fold, fit_on, fold_held in five_folds(examples):
            inner_train, inner_held = split_heldout(fit_on, 0.2, fold)
            inner = {name: heldout_scores(train_estimator(view(inner_train, name)), view(inner_held, name))["r2"]
                     for name in SIGNED[1:]}
            chosen = max(inner, key=inner.get)
            row = [heldout_scores(train_estimator(view(fit_on, key)), view(fold_held, key)) for key in (shipped, chosen)]
            print(f"| fold {fold + 1} of 5: direct-logit → {chosen} (chosen inside the fold) | {row[0]['r2']:.3f} → "
                  f"{row[1]['r2']:.3f} | {row[0]['lds']:.3f} → {row[1]['lds']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
