"""How far one method's scores moved between two evaluate runs, on the samples both scored.

    python experiments/compare_runs.py runs/eval50/samples.jsonl /tmp/am10/samples.jsonl [--method amortized]

Prints the largest absolute difference of the region scores and of the per-span r2, and the largest |score|
for scale: the check that a change to a method's computation (float32 order, a new kernel) did not change
what it computes beyond rounding.
"""
import argparse
from pathlib import Path
import sys

import numpy as np

from vattr_bench.results import read_records


def scored(path: str, method: str) -> dict:
    if not Path(path).is_file():
        sys.exit(f"{path}: no such file (an evaluate run's samples.jsonl)")
    return {(r["benchmark"], r["sample_id"]): r for r in read_records(Path(path))
            if r.get("method") == method and "scores" in r}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--method", default="amortized")
    args = parser.parse_args()
    before, after = scored(args.before, args.method), scored(args.after, args.method)
    common = sorted(set(before) & set(after))
    if not common:
        sys.exit(f"no sample scored by {args.method} in both {args.before} and {args.after}")
    score_diff = max(np.abs(np.subtract(after[k]["scores"], before[k]["scores"])).max() for k in common)
    r2_diff = max(np.nanmax(np.abs(np.subtract(np.asarray(after[k]["span_metrics"]["r2"], float),
                                               np.asarray(before[k]["span_metrics"]["r2"], float)))) for k in common)
    largest = max(np.abs(after[k]["scores"]).max() for k in common)
    print(f"{args.method}: {len(common)} samples in common; scores within {score_diff:.2g} (largest |score| "
          f"{largest:.3g}), per-span r2 within {r2_diff:.2g}")


if __name__ == "__main__":
    main()
