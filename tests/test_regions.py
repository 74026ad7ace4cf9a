import numpy as np
import pytest

from vattr_bench.benchmarks import synthetic_sample
from vattr_bench.regions import PROTOCOLS, ablate_image, make_regions


@pytest.fixture(scope="module")
def sample_and_prepared(tiny):
    s = synthetic_sample("general", 5)
    return s, tiny.prepare(s.image, s.prompt)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_partitions_the_visual_tokens(tiny, sample_and_prepared, protocol):
    sample, prepared = sample_and_prepared
    regions, note = make_regions(protocol, tiny, prepared, k=16, sample=sample)
    assert note is None
    assert regions.token_matrix.shape == (regions.k, prepared.n_visual_tokens)
    assert np.all(regions.token_matrix.sum(0) == 1) and np.all(regions.token_matrix.sum(1) >= 1)
    assert regions.pixel_masks.shape == (regions.k, 64, 64)
    assert np.all(regions.pixel_masks.sum(0) <= 1)  # no pixel in two regions
    assert regions.params["k"] == regions.k
    if protocol in ("grid", "feature-ward"):
        assert regions.k == 16 and regions.pixel_masks.sum() == 64 * 64


def test_feature_ward_regions_are_contiguous_and_follow_content(tiny, sample_and_prepared):
    from scipy.ndimage import label

    sample, prepared = sample_and_prepared
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16)
    for mask in regions.pixel_masks:
        assert label(mask)[1] == 1  # Ward with grid connectivity: one connected piece each
    grid, _ = make_regions("grid", tiny, prepared, k=16)
    assert not np.array_equal(regions.token_matrix, grid.token_matrix)


def test_k_is_clamped_and_checked(tiny, sample_and_prepared):
    sample, prepared = sample_and_prepared
    regions, note = make_regions("grid", tiny, prepared, k=128)
    assert regions.k == 64 and "clamped to 64" in note
    with pytest.raises(ValueError, match="outside 16–128"):
        make_regions("grid", tiny, prepared, k=8)
    with pytest.raises(ValueError, match="unknown region protocol"):
        make_regions("voronoi", tiny, prepared)
    with pytest.raises(ValueError, match="synthetic samples only"):
        make_regions("gt-boxes", tiny, prepared, sample=None)


def test_gt_boxes_has_one_region_per_step_plus_background(tiny, sample_and_prepared):
    sample, prepared = sample_and_prepared
    regions, _ = make_regions("gt-boxes", tiny, prepared, sample=sample)
    assert regions.k == len(sample.steps) + 1
    x0, y0, x1, y1 = sample.steps[0].box
    assert regions.pixel_masks[1][y0:y1, x0:x1].all()


@pytest.mark.parametrize("operator", ["mean-fill", "blur"])
def test_pixel_operators_touch_only_the_region(operator):
    img = synthetic_sample("math", 0).image
    mask = np.zeros((64, 64), bool)
    mask[10:30, 5:25] = True
    out = np.asarray(ablate_image(img, mask, operator)).astype(int)
    before = np.asarray(img).astype(int)
    assert np.array_equal(out[~mask], before[~mask]) and not np.array_equal(out[mask], before[mask])
    with pytest.raises(ValueError, match="unknown pixel ablation operator"):
        ablate_image(img, mask, "erase")


def test_feature_ward_on_a_dino_backbone_folder(tiny, sample_and_prepared, tmp_path):
    """A DINO backbone given by path (a tiny random Dinov2 saved here: no downloads) drives the clustering."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=64)).save_pretrained(tmp_path)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    sample, prepared = sample_and_prepared
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16, backbone=str(tmp_path))
    assert regions.k == 16 and regions.params["features"] == str(tmp_path)
    assert np.all(regions.token_matrix.sum(0) == 1)
