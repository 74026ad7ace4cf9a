"""Pictures that do not mislead: each region's number inside its region, outlines on pixel edges inside the
image in a colour seen on any background, and the heatmaps numbered with a colour scale."""
import numpy as np
import pytest

from vattr_bench import heatmaps
from vattr_bench.heatmaps import boundary_segments, draw_regions, label_points
from vattr_bench.types import Regions


def regions_of(label_map: np.ndarray) -> Regions:
    k = int(label_map.max()) + 1
    masks = np.stack([label_map == i for i in range(k)])
    return Regions(pixel_masks=masks, token_matrix=np.eye(k, dtype=bool), protocol="test")


def background_around_a_bar() -> np.ndarray:
    """Region 0: a bar across the middle; region 1: everything else, whose centroid lies on the bar."""
    labels = np.ones((40, 30), dtype=np.int64)
    labels[16:24, 3:27] = 0
    return labels


def test_a_number_sits_inside_its_region_where_the_centroid_does_not():
    labels = background_around_a_bar()
    regions = regions_of(labels)
    ys, xs = np.nonzero(regions.pixel_masks[1])
    assert labels[round(ys.mean()), round(xs.mean())] == 0  # the old placement: on the bar
    for k, (x, y) in enumerate(label_points(regions.pixel_masks)):
        assert labels[y, x] == k
    x, y = label_points(regions.pixel_masks)[1]
    assert min(y, 39 - y, x, 29 - x) >= 6  # the deepest point: away from the image edge too


def test_an_empty_region_has_no_number():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0] = True
    assert label_points(masks) == [(2, 2), None]


def test_outlines_follow_pixel_edges_inside_the_image():
    labels = np.zeros((8, 10), dtype=np.int64)
    labels[:, 5:] = 1
    assert boundary_segments(labels) == [[(4.5, -0.5), (4.5, 7.5)]]  # one line, the full height, no further
    labels = background_around_a_bar()
    for (x0, y0), (x1, y1) in boundary_segments(labels):
        assert -0.5 <= min(x0, x1) and max(x0, x1) <= 29.5 and -0.5 <= min(y0, y1) and max(y0, y1) <= 39.5
        assert x0 == x1 or y0 == y1
    total = sum(abs(x1 - x0) + abs(y1 - y0) for (x0, y0), (x1, y1) in boundary_segments(labels))
    assert total == 2 * (8 + 24)  # the bar's perimeter, once


def test_outlines_white_on_a_dark_halo_and_the_view_kept_to_the_image():
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    labels = background_around_a_bar()
    ax = Figure().subplots()
    ax.imshow(np.full((40, 30, 3), 255, dtype=np.uint8))
    draw_regions(ax, regions_of(labels), emphasis=0)
    halo, line = ax.collections
    assert np.allclose(halo.get_colors()[0][:3], 0) and np.allclose(line.get_colors()[0], to_rgba("white"))
    assert halo.get_linewidths()[0] > line.get_linewidths()[0]
    assert ax.get_xlim() == (-0.5, 29.5) and ax.get_ylim() == (39.5, -0.5)
    numbers = {t.get_text(): t for t in ax.texts}
    assert set(numbers) == {"0", "1"} and numbers["0"].get_fontsize() > numbers["1"].get_fontsize()
    for k, text in numbers.items():
        x, y = text.get_position()
        assert labels[int(y), int(x)] == int(k)


@pytest.fixture
def captured(monkeypatch):
    """The figures the save_* functions make, kept for inspection (and still written)."""
    figures, save = [], heatmaps._save
    monkeypatch.setattr(heatmaps, "_save", lambda fig, path, **kw: figures.append(fig) or save(fig, path, **kw))
    return figures


def test_heatmap_panels_carry_numbers_outlines_and_a_colour_scale(tmp_path, captured):
    from PIL import Image

    labels = background_around_a_bar()
    image = Image.fromarray(np.full((40, 30, 3), 200, dtype=np.uint8))
    scores = {"ablation (truth)": np.array([[0.1, 0.9], [0.5, -0.2]]), "attention": np.array([[0.3, 0.2], [0.0, 0.0]])}
    heatmaps.save_heatmap_png(tmp_path / "h.png", image, regions_of(labels), scores, ["span a", "span b"], "title")
    assert (tmp_path / "h.png").stat().st_size > 1000
    fig = captured[-1]
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    scales = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == 4 and len(scales) == 1
    assert "scaled per panel" in scales[0].get_ylabel()
    for ax in panels:
        assert sorted(t.get_text() for t in ax.texts) == ["0", "1"] and len(ax.collections) == 2
    first = panels[0]
    assert "top region 1: +0.9" in first.get_xlabel()
    assert max(first.texts, key=lambda t: t.get_fontsize()).get_text() == "1"  # the top region's number stands out


def test_regions_picture_of_a_sample(tiny, tmp_path, captured):
    from vattr_bench.benchmarks import synthetic_sample
    from vattr_bench.regions import make_regions

    sample = synthetic_sample("general", 0, split="test", seed=0)
    prepared = tiny.prepare(sample.image, sample.prompt)
    regions, _ = make_regions("feature-ward", tiny, prepared, k=16)
    heatmaps.save_regions_png(tmp_path / "r.png", sample.image, regions)
    labels = regions.label_map()
    drawn = captured[-1].axes[1]
    assert len(drawn.texts) == regions.k
    for text in drawn.texts:
        x, y = text.get_position()
        assert labels[int(y), int(x)] == int(text.get_text())
