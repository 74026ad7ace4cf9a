"""lm-evaluation-harness glue for the task YAMLs beside this file: the documents come from the package's
seeded synthetic generators (no download), the image is redrawn from a document's (family, split, seed,
index), and a trace is scored as `vattr-bench generate` scores it (the answer after `</think>`, exact match
after whitespace/case normalisation)."""
from __future__ import annotations

DEFAULT_N_SAMPLES = 200  # documents per task; lm_eval's --limit takes the first N, as generate's --limit does


def synthetic_dataset(family: str, split: str = "test", seed: int = 0, n_samples: int = DEFAULT_N_SAMPLES, **_metadata):
    """A `datasets.DatasetDict` with one split named ``split``: samples 0 … n_samples-1 of ``family``, in
    `vattr-bench generate`'s order. lm-eval calls it with the YAML's ``dataset_kwargs`` and its ``metadata``
    (so `--metadata '{"n_samples": 1000}'` draws more)."""
    import datasets

    from vattr_bench.benchmarks import synthetic_sample

    rows = []
    for index in range(int(n_samples)):
        sample = synthetic_sample(family, index, split=split, seed=seed)
        rows.append({"sample_id": sample.id, "family": family, "split": split, "seed": seed, "index": index,
                     "prompt": sample.prompt, "reference": sample.reference})
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def doc_to_image(doc) -> list:
    from vattr_bench.benchmarks import synthetic_sample

    return [synthetic_sample(doc["family"], doc["index"], split=doc["split"], seed=doc["seed"]).image]


def doc_to_text(doc) -> str:
    # lm-eval's placeholder for where the image goes (hf-multimodal puts the image first in the chat turn,
    # as the package's own prompt does)
    return "<image>" + doc["prompt"]


def answer_of(completion: str) -> str:
    from vattr_bench.models.prompting import answer_from_trace

    return answer_from_trace(completion)


def process_results(doc, results) -> dict:
    """results[0] is the generated trace: 1.0 when its answer equals the reference (the package's exact match)."""
    from vattr_bench.models.prompting import is_correct

    return {"exact_match": float(bool(is_correct(answer_of(results[0]), doc["reference"])))}
