"""Pictures: region maps over an image, per-span attribution heatmaps, and `perf`'s costs."""
from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import numpy as np

from .types import Regions


def save_regions_png(path: Path, image, regions: Regions, title: str = "") -> None:
    """The image, and beside it the same image with each region outlined and numbered: the number sits at
    the region's pixel farthest from its border (so it is inside the region, whatever its shape), the
    outlines run along pixel edges (so they stay inside the image), white on a dark halo (seen on any
    colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    _show_image(axes[0], image, regions.pixel_masks.shape[1:])
    axes[0].set_title("image")
    _show_image(axes[1], image, regions.pixel_masks.shape[1:])
    draw_regions(axes[1], regions, fontsize=7 if regions.k <= 32 else 5)
    axes[1].set_title(title or f"{regions.protocol}, K={regions.k}")
    for ax in axes:  # a frame, not axes: where a pale image ends is seen
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)


def save_heatmap_png(path: Path, image, regions: Regions, scores, span_texts: list[str], title: str,
                     captions: dict[str, list[str]] | None = None, numbers: bool = True) -> None:
    """One column per span, one row per set of scores — ``scores`` is a dict (row label -> (n_spans, K)),
    or one (n_spans, K) array for a single unlabelled row: the image with each region tinted by the span's
    score, normalised per panel (the colour scale beside the panels: 0 is the span's lowest region, 1 its
    highest), the regions outlined and, with ``numbers``, numbered (the top region's number larger). Under
    each panel its top region and that score, then ``captions[label][span]`` when given — the truth's
    magnitude is read there, not off the colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows = scores if isinstance(scores, dict) else {"": scores}
    n = len(span_texts)
    fig, axes = plt.subplots(len(rows), n, figsize=(2.3 * n + 1.2, 2.6 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    labels = regions.label_map()
    for r, (label, row) in enumerate(rows.items()):
        for s, (ax, span_scores) in enumerate(zip(axes[r], np.asarray(row, dtype=np.float64))):
            _show_image(ax, image, labels.shape)
            ax.imshow(_pixel_heat(labels, span_scores, np.nan), cmap=HEAT_CMAP, alpha=0.55, vmin=0, vmax=1,
                      interpolation="nearest")
            top = int(np.argmax(span_scores))
            draw_regions(ax, regions, numbers=numbers, emphasis=top, fontsize=5 if regions.k <= 32 else 4,
                         linewidth=0.6)
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(span_texts[s], 22)[:3]), fontsize=7)
            caption = f"top region {top}: {span_scores[top]:+.3g}"
            if captions and label in captions:
                caption += f"\n{captions[label][s]}"
            ax.set_xlabel(caption, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if s == 0 and label:
                ax.set_ylabel(label, fontsize=8)
    scale = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=HEAT_CMAP), ax=axes, shrink=min(0.9, 0.5 + 0.2 * len(rows)),
                         aspect=25, pad=0.01)
    scale.set_ticks([0, 0.5, 1], labels=["span's\nlowest", "", "span's\nhighest"], fontsize=6)
    scale.set_label("region score, scaled per panel", fontsize=7)
    fig.suptitle(title, fontsize=8)
    _save(fig, path, layout=False)


def save_perf_png(report: dict, path: Path) -> None:
    """`perf`'s report (as `run_perf` returns it or `--output` saved it) as two panels: seconds per span of
    each method on the same spans (log scale, with how many times amortized's), and seconds per token of
    attribution against trace length (log-log: flat is cost proportional to the tokens attributed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_span = sorted(report["per_span_s"].items(), key=lambda kv: kv[1])
    base = report["per_span_s"]["amortized"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    names, seconds = zip(*per_span)
    bars = left.barh(names, seconds, color=["tab:orange" if n.startswith("amortized") else "tab:gray" for n in names])
    left.set_xscale("log")
    left.set_xlim(min(seconds) / 10, max(seconds) * 8)  # room for the bars to start and the labels to end
    left.invert_yaxis()
    left.set_xlabel("seconds per span (log)")
    left.bar_label(bars, labels=[f" {s / base:.0f}×" if s / base >= 10 else f" {s / base:.1f}×" for s in seconds],
                   fontsize=7)
    left.set_title(f"cost per span, {report['n_spans']} spans (× amortized's)", fontsize=9)
    others = iter(["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:gray"])  # orange is amortized's
    for name, row in report["per_token_s"].items():
        lengths = sorted(row, key=int)
        right.plot([int(n) for n in lengths], [row[n] for n in lengths], marker="o", label=name,
                   color="tab:orange" if name == "amortized" else next(others, None))
    right.set_xscale("log", base=2)
    right.set_xticks([int(n) for n in lengths], [str(n) for n in lengths])
    right.set_yscale("log")
    right.set_xlabel("trace length (tokens)")
    right.set_ylabel("seconds per attributed token (log)")
    right.legend(fontsize=7)
    right.set_title("per-token cost against trace length", fontsize=9)
    summary = report["summary"]
    from .perf import interval_text  # here: perf pulls in the methods (torch, captum), not needed for other pictures

    interval = interval_text(report.get("overhead_pct_ci95"))
    interval = f" (95% interval {interval})" if interval else ""
    fig.suptitle(f"vattr-bench perf — {report['model']} ({report.get('features', 'attention')} estimator): streaming "
                 f"overhead {summary['overhead_pct']:+.2f}%{interval}, lag {summary['lag_decode_steps']:.2f} decode steps",
                 fontsize=9)
    _save(fig, path)


def tradeoff_figure(rows, metric: str = "r2", lower_is_better: bool = False, title: str = ""):
    """Faithfulness against cost, a panel per benchmark: each method's ``metric`` (y) against its seconds
    of attribution per trace token (x, log) — how faithful, at what price, in one picture. ``rows``: a
    DataFrame with columns benchmark, label, sec_per_token and ``metric``; rows missing either are left
    out. A label keeps one colour and marker across panels (amortized's orange), named once in the legend.
    A matplotlib Figure made without pyplot, so a long-running server (the leaderboard) keeps none."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    rows = rows.dropna(subset=["sec_per_token", metric])
    rows = rows[rows["sec_per_token"] > 0]
    benchmarks = sorted(rows["benchmark"].unique()) or ["(no results)"]
    labels = sorted(rows["label"].unique(), key=lambda name: (not str(name).startswith("amortized"), str(name)))
    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 1]  # tab10 without orange
    rest = itertools.cycle([(colour, marker) for marker in "os^vP" for colour in palette])
    style = {}
    for name in labels:  # amortized's labels come first: the first of them is the orange star
        if not style and str(name).startswith("amortized"):
            style[name] = ("tab:orange", "*")
        else:
            style[name] = ("black", "D") if name == "ablation" else next(rest)
    legend_width = 0.45 + 0.055 * max((len(str(name)) for name in labels), default=0)  # inches, at fontsize 7
    fig = Figure(figsize=(2.7 * len(benchmarks) + legend_width, 3.3))
    axes = np.atleast_1d(fig.subplots(1, len(benchmarks), sharey=True))
    for ax, bench in zip(axes, benchmarks):
        for _, row in rows[rows["benchmark"] == bench].iterrows():
            colour, marker = style[row["label"]]
            ax.scatter(row["sec_per_token"], row[metric], color=colour, marker=marker, s=60 if marker == "*" else 30,
                       zorder=3, label=row["label"])
        ax.set_xscale("log")
        ax.set_title(bench, fontsize=9)
        ax.set_xlabel("seconds per token (log)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)", fontsize=8)
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend([handles[name] for name in labels if name in handles], [n for n in labels if n in handles],
               loc="center right", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - legend_width / fig.get_figwidth(), 1))
    return fig


def save_tradeoff_png(results: dict, path: Path, metric: str = "r2") -> None:
    """`tradeoff_figure` of one evaluate run's results.json (its methods on the same samples)."""
    import pandas as pd

    from .metrics import HIGHER_IS_BETTER

    rows = pd.DataFrame([{"benchmark": bench, "label": method, "sec_per_token": m.get("sec_per_token"),
                          metric: m.get(metric)}
                         for bench, methods in results["results"].items() for method, m in methods.items()],
                        columns=["benchmark", "label", "sec_per_token", metric])
    fig = tradeoff_figure(rows, metric, not HIGHER_IS_BETTER.get(metric, True),
                          f"{results.get('model', '?')}: {metric} against ablation vs attribution cost "
                          "(ablation's cost: computing the truth)")
    _save(fig, path, layout=False)


HEAT_CMAP = "inferno"


def draw_regions(ax, regions: Regions, numbers: bool = True, emphasis: int | None = None, fontsize: float = 7,
                 linewidth: float = 1.0) -> None:
    """Outline every region on ``ax`` (an image shown in pixel coordinates) and, with ``numbers``, write
    each region's number at its deepest pixel (``emphasis``: one region's number drawn larger, in bold)."""
    import matplotlib.patheffects as effects
    from matplotlib.collections import LineCollection

    labels = regions.label_map()
    segments = boundary_segments(labels)
    if segments:  # a dark halo under a white line: visible on light and dark images alike
        ax.add_collection(LineCollection(segments, colors="black", linewidths=linewidth * 2.6, alpha=0.7,
                                         capstyle="projecting"))
        ax.add_collection(LineCollection(segments, colors="white", linewidths=linewidth, capstyle="projecting"))
    if numbers:
        halo = [effects.withStroke(linewidth=2, foreground="black")]
        for k, point in enumerate(label_points(regions.pixel_masks)):
            if point is not None:
                big = k == emphasis
                ax.text(point[0], point[1], str(k), color="white", ha="center", va="center", path_effects=halo,
                        fontsize=fontsize * (1.5 if big else 1), fontweight="bold" if big else "normal")
    h, w = labels.shape
    ax.set_xlim(-0.5, w - 0.5)  # the lines and numbers do not widen the view past the image
    ax.set_ylim(h - 0.5, -0.5)


def boundary_segments(labels: np.ndarray) -> list[list[tuple[float, float]]]:
    """Line segments, in the pixel coordinates of ``imshow``, along every edge between two pixels of
    different regions (``labels`` from `Regions.label_map`, -1: no region), collinear edges joined: on pixel
    borders, so never past the image."""
    segments = []
    vertical = labels[:, 1:] != labels[:, :-1]  # [y, x]: pixels x and x+1 of row y differ
    for x in np.flatnonzero(vertical.any(axis=0)):
        for start, end in _runs(vertical[:, x]):
            segments.append([(x + 0.5, start - 0.5), (x + 0.5, end - 0.5)])
    horizontal = labels[1:] != labels[:-1]  # [y, x]: pixels y and y+1 of column x differ
    for y in np.flatnonzero(horizontal.any(axis=1)):
        for start, end in _runs(horizontal[y]):
            segments.append([(start - 0.5, y + 0.5), (end - 0.5, y + 0.5)])
    return segments


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-D array, end exclusive."""
    changes = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8)))
    return list(zip(changes[0::2], changes[1::2]))


def label_points(pixel_masks: np.ndarray) -> list[tuple[int, int] | None]:
    """Per region, (x, y) of its pixel farthest from its border (the image's edge counts as one): a point
    inside the region even where its centroid is not (a ring, an L, a background around objects). None for
    a region with no pixel."""
    return [_deepest_pixel(mask) if mask.any() else None for mask in pixel_masks]


def _deepest_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of a non-empty ``mask`` farthest from its border (the image's edge counts as one)."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(x), int(y)


def _show_image(ax, image, shape: tuple[int, int]) -> None:
    """``image`` stretched over the pixel grid of the regions' masks (``shape``: height, width), so that
    regions made on a resized copy of the image still sit where they belong."""
    h, w = shape
    ax.imshow(image, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")


def _pixel_heat(labels: np.ndarray, span_scores: np.ndarray, outside: float) -> np.ndarray:
    """Each pixel's region score, normalised to the span (0: its lowest region, 1: its highest; all 0 when
    the regions tie), ``outside`` where a pixel is in no region (``labels`` from `Regions.label_map`)."""
    span_scores = np.asarray(span_scores, dtype=np.float64)
    lo, hi = span_scores.min(), span_scores.max()
    norm = (span_scores - lo) / (hi - lo) if hi > lo else np.zeros_like(span_scores)
    return np.where(labels >= 0, norm[np.clip(labels, 0, None)], outside)


def _save(fig, path: Path, layout: bool = True) -> None:
    """``layout``: False for a figure that laid itself out (room kept for a legend beside the panels)."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # a no-op for figures made without pyplot


def overlay_layout(image, regions: Regions, size: int = 360) -> dict:
    """What `annotated_overlay` draws the same for every span of one image and its regions — the image and
    label map at display size, the region outlines, and where each region's number goes (the pixel farthest
    from the region's border, found on a quarter-size map: a number sits on its own region, never on a
    neighbour inside its bounding box) — computed once per image, not per span."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    image = image.convert("RGB")
    height = max(1, round(size * image.height / image.width))
    labels = np.asarray(Image.fromarray(regions.label_map().astype(np.int32)).resize((size, height), Image.NEAREST))
    step = 4
    coarse = labels[step // 2::step, step // 2::step]
    anchors = {}
    for k in range(regions.k):
        mask = coarse == k
        if not mask.any():
            mask, scale, offset = labels == k, 1, 0  # a region too thin for the coarse map
            if not mask.any():
                continue
        else:
            scale, offset = step, step // 2
        x, y = _deepest_pixel(mask)
        anchors[k] = (x * scale + offset, y * scale + offset)
    base = np.asarray(image.resize((size, height), Image.BILINEAR), dtype=np.float64) / 255.0
    return {"size": size, "height": height, "labels": labels, "base": base, "anchors": anchors,
            "outline": find_boundaries(labels, mode="inner")}


def annotated_overlay(image, regions: Regions, span_scores: np.ndarray, size: int = 360, caption: str = "",
                      layout: dict | None = None):
    """One span's scores over the image for live display (the leaderboard demo), drawn with PIL (no figure):
    each region tinted by its score (inferno, normalised to the span), white outlines, every region's number
    (`overlay_layout`), the top three boxed in yellow, and a colour scale on the right labelled with the
    span's lowest and highest raw score. ``layout``: `overlay_layout` of the same image, regions and size,
    to reuse across the spans of one image."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    layout = layout or overlay_layout(image, regions, size)
    size, height, labels = layout["size"], layout["height"], layout["labels"]
    scores = np.asarray(span_scores, dtype=np.float64)
    heat = colormaps["inferno"](_pixel_heat(labels, scores, 0.0))[..., :3]
    blended = np.where((labels >= 0)[..., None], 0.4 * layout["base"] + 0.6 * heat, layout["base"])
    blended[layout["outline"]] = 1.0
    bar_width, margin = 14, 56
    canvas = Image.new("RGB", (size + margin, height + (16 if caption else 0)), "white")
    canvas.paste(Image.fromarray((blended * 255).round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(9, size // 30))
    top = set(np.argsort(-scores)[:3].tolist())
    for k, (x, y) in layout["anchors"].items():
        if k in top:
            box = draw.textbbox((x, y), str(k), font=font, anchor="mm")
            draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(255, 221, 0), outline="black")
            draw.text((x, y), str(k), fill="black", font=font, anchor="mm")
        else:
            draw.text((x, y), str(k), fill="white", font=font, anchor="mm", stroke_width=2, stroke_fill="black")
    # the colour scale: highest score at the top
    gradient = colormaps["inferno"](np.linspace(1, 0, height))[:, :3]
    bar = np.repeat((gradient[:, None, :] * 255).round().astype(np.uint8), bar_width, axis=1)
    canvas.paste(Image.fromarray(bar), (size + 4, 0))
    lo, hi = (scores.min(), scores.max()) if scores.size else (0.0, 0.0)
    small = ImageFont.load_default(size=10)
    draw.text((size + bar_width + 6, 0), f"{hi:+.2f}", fill="black", font=small, anchor="lt")
    draw.text((size + bar_width + 6, height), f"{lo:+.2f}", fill="black", font=small, anchor="lb")
    draw.text((size + bar_width + 6, height // 2), "score", fill="black", font=small, anchor="lm")
    if caption:
        draw.text((2, height + 2), caption[:90], fill="black", font=small, anchor="lt")
    return canvas
