"""Memory and time of the offline `amortized` method at growing trace lengths, two ways on the same trace:

    python experiments/offline_memory.py [--lengths 256,1024,4096]

"full attention array": the estimator applied to `trace_features` — the (L, H, T, N) attention of every
trace token to every visual token, then pooled (what the method did before it went span by span, and what
training still does on its ≤128-token traces); "span by span": `attribute_trace`, the method now — one
captured pass, then the streaming worker's per-span computation. Traces are a real test trace's thinking
sentences repeated to the length, teacher-forced (as `perf` does). Peak memory is what tracemalloc sees
(numpy and Python allocations; torch's own buffers, alike in both, are not counted); time is one call.
"""
import argparse
import time
import tracemalloc

import numpy as np

from vattr_bench.amortized import attribute_trace, feature_kind, feature_sign_weight, trace_features
from vattr_bench.methods import load_method
from vattr_bench.models import load_model
from vattr_bench.models.spans import split_spans
from vattr_bench.perf import PerfConfig, prepare_items
from vattr_bench.types import Trace


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vattr-tiny")
    p.add_argument("--lengths", default="256,1024,4096")
    a = p.parse_args()
    model = load_model(a.model)
    cfg = PerfConfig(per_family=1, benchmark="math")
    _, prepared, regions = prepare_items(model, cfg)[0]
    estimator = load_method("amortized").load_for(model, cfg.regions, cfg.ablation)
    pool, kind, beta = estimator.meta.get("region_pool", "sum"), feature_kind(estimator.meta), feature_sign_weight(estimator.meta)
    base = model.generate(prepared, max_new_tokens=cfg.max_new_tokens)
    thinking = [sp for sp in base.spans if not sp.is_answer]
    prefix, body = base.token_ids[:thinking[0].start], base.token_ids[thinking[0].start:thinking[-1].end]
    ways = {"full attention array": lambda t: estimator.predict(trace_features(model, prepared, t, regions.token_matrix, pool, kind, beta)),
            "span by span": lambda t: attribute_trace(model, prepared, t, regions, estimator)}
    print(f"{a.model}: L·H = {model.num_layers}×{model.num_heads}, N = {prepared.n_visual_tokens} visual tokens\n")
    print("| trace tokens | spans | way | peak memory (tracemalloc) | seconds | max difference in scores |\n|---|---|---|---|---|---|")
    for length in map(int, a.lengths.split(",")):
        ids = (prefix + body * (length // len(body) + 1))[:length]
        trace = Trace(ids, model.decode(ids), split_spans(ids, model.decode), np.zeros(len(ids)), "")
        scores = {}
        for name, run in ways.items():
            tracemalloc.start()
            start = time.perf_counter()
            scores[name] = run(trace)
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            diff = np.abs(scores[name] - scores["full attention array"]).max()
            print(f"| {length} | {len(trace.spans)} | {name} | {peak:.1f} MB | {seconds:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
