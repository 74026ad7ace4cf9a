"""How `vattr-bench perf`'s ratios move with the size of the model: the amortized method's cost grows with
L·H and the visual tokens (and, for logit-weighted features, with L·hidden² per token the process has
not seen yet: its head directions, kept per model), ablation and gradients pay for whole forward/backward
passes.

    python experiments/perf_scaling.py [--sizes 128x4,512x8,1024x12] [--rounds 3] [--per-family 1] [--device cuda] [--heads 16]

For each size (decoder hidden width × layers, 16 heads, MLP 3× wide), a Llava model with vattr-tiny's
vision tower config, tokenizer and processor and a decoder of that size with random weights. Random
weights do not write sentences, so every model is made to write vattr-tiny's own greedy trace for each
prompt (a logits processor forces the next token, in every mode alike): spans then close where they
do for the real model, and every row is timed on the same tokens and spans. The estimator is random
too: its values do not change its cost, its feature kind does (`--features`, the shipped kind by
default), and so does how many heads it uses (`--heads m`: m random ones, as an estimator trained with
`train-estimator --heads m` uses m; default all). Measured with perf's own functions, one run per size: the streaming overhead and lag
(interleaved rounds, medians) and the cost per span of amortized, exhaustive ablation and
input×gradient (perf's fastest gradient baseline); for logit-weighted features also amortized in a
process's first stream (no head directions kept yet), and timed in place in the inline streams (perf's
"amortized, in the stream"). Costs only: nothing here is faithful.
"""
import argparse

import numpy as np
import torch
from transformers import AutoConfig, LlavaForConditionalGeneration, LogitsProcessorList

from vattr_bench.amortized import FEATURES, LinearEstimator
from vattr_bench.methods.gradients import InputXGradientMethod
from vattr_bench.models import BUILTIN, load_model
from vattr_bench.models.hf import HFVisionLanguageModel, load_processor
from vattr_bench.models.random_init import ForceTokens
from vattr_bench.perf import (FIRST_STREAM, PerfConfig, cost_per_span, interval_text, measure_streaming, prepare_items,
                              warm_up)


def write_traces(vlm: HFVisionLanguageModel, traces: dict[tuple, list[int]]) -> None:
    """From now on, generating for a prompt in ``traces`` (keyed by its token ids) writes that trace."""
    generate, eos = vlm.model.generate, min(vlm.eos_ids)

    def forced_generate(*args, **kwargs):
        prompt = kwargs["input_ids"]
        ids = traces[tuple(prompt[0].tolist())]
        return generate(*args, logits_processor=LogitsProcessorList([ForceTokens(ids, prompt.shape[1], eos)]), **kwargs)

    vlm.model.generate = forced_generate


def random_decoder_model(hidden: int, layers: int, heads: int = 16, device: str = "cpu",
                         dtype: torch.dtype | None = None) -> HFVisionLanguageModel:
    source = str(BUILTIN["vattr-tiny"])
    config = AutoConfig.from_pretrained(source)
    text = config.text_config
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = hidden, layers, 3 * hidden
    text.num_attention_heads = text.num_key_value_heads = heads
    text.head_dim = hidden // heads
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(device, dtype)
    return HFVisionLanguageModel(model, load_processor(source, config.model_type), f"random-{hidden}x{layers}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128x4,512x8,1024x12", help="decoder hidden width × layers, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-family", type=int, default=1)
    p.add_argument("--features", default="logit-weighted", choices=FEATURES,
                   help="the random estimator's feature kind (its cost differs; its values do not matter)")
    p.add_argument("--device", default="cpu", help="where the models run (on a GPU the amortized worker's per-span "
                   "work runs there too)")
    p.add_argument("--heads", type=int, default=None, help="the random estimator uses this many random heads (default all)")
    a = p.parse_args()
    cfg = PerfConfig(per_family=a.per_family, rounds=a.rounds, regions="grid", max_new_tokens=128)
    tiny = load_model("vattr-tiny", device=a.device)
    items = prepare_items(tiny, cfg)
    traces = {tuple(prepared.inputs["input_ids"][0].tolist()): tiny.generate_ids(prepared, cfg.max_new_tokens)
              for _, prepared, _ in items}
    rows = []
    for size in ["vattr-tiny"] + a.sizes.split(","):
        vlm = tiny if size == "vattr-tiny" else random_decoder_model(*map(int, size.split("x")), device=a.device)
        write_traces(vlm, traces)
        rng = np.random.default_rng(0)
        weights, meta = rng.normal(size=vlm.num_layers * vlm.num_heads), {"region_pool": "sum", "features": a.features}
        if a.heads is not None and a.heads < len(weights):  # an estimator of some heads: the others' weights 0
            meta["heads"] = np.sort(rng.choice(len(weights), a.heads, replace=False)).tolist()
            weights[np.setdiff1d(np.arange(len(weights)), meta["heads"])] = 0
        estimator = LinearEstimator(weights, 0.0, meta)
        items = prepare_items(vlm, cfg)
        warm_up(vlm, items, estimator, cfg, methods=(InputXGradientMethod,))
        streaming = measure_streaming(vlm, items, estimator, cfg)
        per_span, n_spans = cost_per_span(vlm, items, estimator, cfg, methods=(InputXGradientMethod,))
        params = sum(t.numel() for t in vlm.model.model.language_model.parameters()) / 1e6
        rows.append((size, params, vlm.num_layers * vlm.num_heads, streaming, per_span, n_spans))
        print(f"{size}: {params:.1f} M decoder parameters, overhead {streaming['overhead_pct']:+.1f}%, ablation "
              f"{per_span['ablation'] / per_span['amortized']:.0f}× amortized per span", flush=True)

    where = (torch.cuda.get_device_name(tiny.device) if tiny.device.type == "cuda"
             else "2 CPU cores" if tiny.device.type == "cpu" else str(tiny.device))
    heads = "all heads" if a.heads is None else f"{a.heads} heads (all where fewer)"
    print(f"\n{len(items)} prompts, vattr-tiny's traces forced, {rows[0][5]} spans; one run per size, {where}; "
          f"the estimator reads {heads}\n")
    print("| decoder | params (M) | L·H | decode step | overhead (single rounds; 95% interval) | inline, no thread | lag (steps) "
          "| amortized / span | first stream | in the stream | ablation / span | × | input×gradient / span | × |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, params, lh, st, ps, _ in rows:
        g, (lo, hi) = st["generation_s"], st["overhead_pct_rounds"]
        print(f"| {size} | {params:.1f} | {lh} | {st['decode_step_s'] * 1e3:.1f} ms | {st['overhead_pct']:+.1f}% "
              f"({lo:+.1f} to {hi:+.1f}; {interval_text(st['overhead_pct_ci95']) or 'n/a'}) "
              f"| {100 * (g['inline'] / g['plain'] - 1):+.1f}% | {st['lag_decode_steps']:.2f} | {ps['amortized'] * 1e6:.0f} µs "
              f"| {f'{ps[FIRST_STREAM] * 1e6:.0f} µs' if FIRST_STREAM in ps else '–'} | {st['in_stream_s_per_span'] * 1e6:.0f} µs "
              f"| {ps['ablation'] * 1e3:.1f} ms | {ps['ablation'] / ps['amortized']:.0f}× "
              f"| {ps['input_x_gradient'] * 1e3:.1f} ms | {ps['input_x_gradient'] / ps['amortized']:.0f}× |")


if __name__ == "__main__":
    main()
