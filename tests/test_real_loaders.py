"""Each real-set loader on a tiny fixture written in that set's real schema (no network)."""
import datasets
import pytest
from PIL import Image

from vattr_bench.benchmarks import load_samples
from vattr_bench.benchmarks.real import REAL_SETS, load_real_samples


def _img(colour):
    return Image.new("RGB", (80, 64), colour)


FIXTURES = {
    "MathVista": {"pid": ["1"], "question": ["What is x?"], "query": ["Hint: answer with an integer. What is x?"],
                  "decoded_image": [_img("red")], "image": ["images/1.jpg"], "choices": [None], "answer": ["3"],
                  "question_type": ["free_form"]},
    "ScienceQA": {"image": [_img("green"), None], "question": ["Which is a mammal?", "text only"],
                  "choices": [["frog", "whale"], ["a", "b"]], "answer": [1, 0], "hint": ["", ""],
                  "subject": ["natural science"] * 2},
    "AI2D": {"question": ["Which label is the sun?"], "options": [["A", "B", "C"]], "answer": ["2"],
             "image": [_img("yellow")]},
    "DocVQA": {"questionId": ["7"], "question": ["What is the date?"], "answers": [["1 May", "May 1"]],
               "image": [_img("white")], "docId": [3]},
    "WebSight": {"image": [_img("blue")], "text": ["<html><body><h1>Hi</h1></body></html>"]},
    "RefCOCO": {"question_id": ["9"], "image": [_img("gray")], "question": ["Provide the bounding box of: left dog"],
                "answer": [["left dog"]], "bbox": [[4.0, 8.0, 30.0, 20.0]]},
}


@pytest.mark.parametrize("name", list(REAL_SETS))
def test_loader_maps_the_real_schema_to_samples(name, tmp_path):
    path = tmp_path / f"{name}.parquet"
    datasets.Dataset.from_dict(FIXTURES[name]).to_parquet(str(path))
    samples = load_real_samples(name, limit=5, data=str(path))
    assert len(samples) == 1  # ScienceQA's text-only question is skipped
    s = samples[0]
    assert s.family == REAL_SETS[name].family and s.image.size == (80, 64) and s.prompt and s.reference
    assert s.source == name
    if name == "ScienceQA":
        assert s.reference == "whale" and "(B) whale" in s.prompt
    if name == "AI2D":
        assert s.reference == "C"
    if name == "RefCOCO":
        assert s.steps[0].box == (4, 8, 34, 28)
    # the same file through the harness entry point
    assert load_samples(REAL_SETS[name].family, 1, source="real", data=str(path), real_set=name)[0].id == s.id


def test_missing_set_says_how_to_provide_it(tmp_path):
    with pytest.raises(ValueError, match="hf download|huggingface-cli download"):
        load_real_samples("ScienceQA", limit=1)  # not cached, offline
    with pytest.raises(ValueError, match="data path not found"):
        load_real_samples("ScienceQA", limit=1, data=str(tmp_path / "nope.parquet"))
    with pytest.raises(ValueError, match="unknown real set"):
        load_real_samples("ImageNet", limit=1)
    with pytest.raises(ValueError, match="is a math set, not code"):
        load_real_samples("MathVista", limit=1, family="code")
