import re

import numpy as np
import pytest

from vattr_bench.benchmarks import FAMILIES, resolve_families, synthetic_sample, synthetic_samples
from vattr_bench.types import Sample

N = 25


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generator_is_deterministic_and_splits_differ(family):
    a, b = synthetic_sample(family, 3, "test"), synthetic_sample(family, 3, "test")
    assert a.id == b.id and a.prompt == b.prompt and a.reference_trace == b.reference_trace
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    train = synthetic_sample(family, 3, "train")
    assert train.id != a.id and not np.array_equal(np.asarray(train.image), np.asarray(a.image))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_step_reads_its_own_drawn_element(family):
    for s in synthetic_samples(family, N):
        assert s.image.size[0] >= 64 and s.image.size[1] >= 64 and s.image.mode == "RGB"
        assert len(s.steps) >= 3 and s.reference
        pixels = np.asarray(s.image).astype(int)
        background = pixels[0, 0] if family != "code" else pixels[-1, -1]
        boxes = [st.box for st in s.steps]
        assert len(set(boxes)) == len(boxes), "two steps read the same box"
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= s.image.width and 0 <= y0 < y1 <= s.image.height
            inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
            # the element is drawn there: a good share of the box differs from the background
            assert (np.abs(inside - background).sum(1) > 60).mean() > 0.15


def _numbers(steps):
    return [int(re.search(r"(\d+)$", st.text).group(1)) for st in steps]


def test_references_follow_from_the_steps():
    for s in synthetic_samples("math", N):
        values = _numbers(s.steps)
        assert s.reference == str(sum(values) if "sum" in s.prompt else max(values))
    for s in synthetic_samples("document", N):
        assert s.reference == "barh ( [ " + " , ".join(map(str, _numbers(s.steps))) + " ] )"
    for s in synthetic_samples("science", N):
        assert s.reference == str(len({st.text.split()[-1] for st in s.steps}))  # "the top part is a circle"
    for s in synthetic_samples("general", N):
        objects = [" ".join(st.text.split()[-2:]) for st in s.steps]  # "top left is a red circle"
        assert s.reference == f"a {objects[0]} , a {objects[1]} , a {objects[2]} and a {objects[3]}"


def test_families_vary_what_the_steps_say():
    for family in FAMILIES:
        texts = {st.text for s in synthetic_samples(family, N) for st in s.steps}
        assert len(texts) >= 8, family


def test_unknown_family_and_empty_prompt_are_clear_errors():
    with pytest.raises(ValueError, match="unknown benchmark 'chemistry'"):
        resolve_families("math,chemistry")
    assert resolve_families("all") == list(FAMILIES)
    with pytest.raises(ValueError, match="prompt is empty"):
        Sample("x", "math", synthetic_sample("math", 0).image, "   ")
