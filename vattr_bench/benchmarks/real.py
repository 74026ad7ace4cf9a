"""Real benchmark sets through `datasets`: each set's own fields mapped to `Sample`.

A set is read from the hub id (when it is in the local Hugging Face cache — nothing is downloaded here)
or from a local folder / parquet / json file in the same schema:

    vattr-bench evaluate --source real --data path/to/ScienceQA-test.parquet --benchmark science …

Real samples carry no ground-truth evidence boxes (RefCOCO's referred-object box excepted), so
`pointing_game` and the `gt-boxes` protocol are for synthetic samples (and RefCOCO) only.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from ..types import EvidenceStep, Sample


@dataclass(frozen=True)
class RealSet:
    hub_id: str
    family: str
    split: str
    to_sample: Callable[[dict, str], Sample]
    config: str | None = None


def _image(value) -> Image.Image:
    """`datasets` gives a PIL image, or (raw parquet) {'bytes': …, 'path': …}."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    if isinstance(value, dict) and value.get("path") and Path(value["path"]).is_file():
        return Image.open(value["path"]).convert("RGB")
    raise ValueError(f"record has no readable image (got {type(value).__name__})")


def _choices_prompt(question: str, choices) -> str:
    letters = "ABCDEFGH"
    return question + "\n" + "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))


def _mathvista(r, sid):
    prompt = r.get("query") or r["question"]
    return Sample(sid, "math", _image(r["decoded_image"]), prompt, str(r["answer"]), source="MathVista")


def _scienceqa(r, sid):
    if r.get("image") is None:
        raise ValueError("text-only ScienceQA question (no image)")
    prompt = _choices_prompt(r["question"], r["choices"])
    return Sample(sid, "science", _image(r["image"]), prompt, str(r["choices"][int(r["answer"])]), source="ScienceQA")


def _ai2d(r, sid):
    options = list(r["options"])
    return Sample(sid, "science", _image(r["image"]), _choices_prompt(r["question"], options),
                  str(options[int(r["answer"])]), source="AI2D")


def _docvqa(r, sid):
    answers = r.get("answers") or [None]
    return Sample(sid, "document", _image(r["image"]), r["question"], answers[0], source="DocVQA")


def _websight(r, sid):
    return Sample(sid, "code", _image(r["image"]), "Write the HTML code for this web page.", r["text"], source="WebSight")


def _refcoco(r, sid):
    image = _image(r["image"])
    x, y, w, h = (float(v) for v in r["bbox"])  # COCO xywh
    box = (int(x), int(y), int(round(x + w)), int(round(y + h)))
    answers = r.get("answer") or []
    reference = answers[0] if isinstance(answers, list) and answers else None
    return Sample(sid, "general", image, r.get("question") or "Describe the referred object.", reference,
                  steps=[EvidenceStep("the referred object", box)], source="RefCOCO")


REAL_SETS: dict[str, RealSet] = {
    "MathVista": RealSet("AI4Math/MathVista", "math", "testmini", _mathvista),
    "ScienceQA": RealSet("derek-thomas/ScienceQA", "science", "test", _scienceqa),
    "AI2D": RealSet("lmms-lab/ai2d", "science", "test", _ai2d),
    "DocVQA": RealSet("lmms-lab/DocVQA", "document", "validation", _docvqa, config="DocVQA"),
    "WebSight": RealSet("HuggingFaceM4/WebSight", "code", "train", _websight),
    "RefCOCO": RealSet("lmms-lab/RefCOCO", "general", "val", _refcoco),
}
DEFAULT_REAL_SET = {"math": "MathVista", "science": "ScienceQA", "document": "DocVQA", "code": "WebSight",
                    "general": "RefCOCO"}


def load_real_samples(name: str, limit: int, data: str | None = None, family: str | None = None) -> list[Sample]:
    """Up to ``limit`` samples of the real set ``name`` (hub id from the cache, or ``data``: a local path)."""
    if name not in REAL_SETS:
        raise ValueError(f"unknown real set {name!r}; choose from {', '.join(REAL_SETS)}")
    spec = REAL_SETS[name]
    if family and family != spec.family:
        raise ValueError(f"{name} is a {spec.family} set, not {family}")
    dataset = _load(spec, data)
    samples, skipped = [], 0
    for i, record in enumerate(dataset):
        if len(samples) >= limit:
            break
        try:
            samples.append(spec.to_sample(record, f"{name}-{i}"))
        except (ValueError, KeyError, TypeError, OSError):
            skipped += 1  # records without a usable image or answer are not benchmark items
    if not samples:
        raise ValueError(f"{name}: no usable records (skipped {skipped})")
    return samples


def _load(spec: RealSet, data: str | None):
    import datasets

    try:
        if data:
            path = Path(data)
            if path.is_file():
                kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix)
                if kind is None:
                    raise ValueError(f"unsupported data file {path} (parquet, json, jsonl or csv)")
                return datasets.load_dataset(kind, data_files=str(path), split="train")
            if path.is_dir():
                return datasets.load_dataset(str(path), split=spec.split)
            raise FileNotFoundError(f"data path not found: {path}")
        return datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    except (FileNotFoundError, ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ValueError(
            f"cannot load {spec.hub_id} ({'offline mode' if offline else 'not found'}): {e}. Provide it with "
            f"`huggingface-cli download --repo-type dataset {spec.hub_id}` where there is network, then pass the "
            f"folder or a parquet file in its schema with --data"
        ) from e
