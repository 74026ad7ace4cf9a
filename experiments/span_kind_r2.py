"""Mean per-span r2 by span kind (thinking step vs answer) from an evaluate run's samples.jsonl.

    python experiments/span_kind_r2.py runs/eval50/samples.jsonl [method ...]

The last span of a trace is its answer span (the splitter puts everything after </think> there).
"""
import json
import sys
from collections import defaultdict

import numpy as np

path = sys.argv[1]
methods = sys.argv[2:] or ["amortized", "integrated_gradients", "saliency", "attention"]
r2 = defaultdict(lambda: defaultdict(list))
with open(path) as f:
    for line in f:
        rec = json.loads(line)
        if "span_metrics" not in rec:  # a failed method's record
            continue
        values = rec["span_metrics"]["r2"]
        for i, v in enumerate(values):
            if v is not None:
                r2[(rec["benchmark"], "answer" if i == len(values) - 1 else "thinking")][rec["method"]].append(v)
print("| benchmark | spans | " + " | ".join(methods) + " |")
print("|---|---|" + "---|" * len(methods))
for (bench, kind), by_method in sorted(r2.items()):
    print(f"| {bench} | {kind} | " + " | ".join(f"{np.mean(by_method[m]):.2f}" for m in methods) + " |")
