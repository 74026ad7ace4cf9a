"""Region protocols: split an image into K regions that map to both pixels and visual tokens.

- ``feature-ward`` (default, the paper's): Ward-linkage agglomerative clustering of per-token patch
  features — the model's own visual embeddings, or a DINO backbone from transformers when
  ``backbone`` names a path/id — with grid connectivity so every region is spatially contiguous.
- ``grid``: a rows×cols grid of visual-token cells.
- ``superpixel``: SLIC superpixels (scikit-image) on the pixels.
- ``gt-boxes``: each ground-truth evidence box of a synthetic sample is a region, the rest is one more.

Each visual token belongs to the region holding most of its pixels; a pixel region that holds no
token's majority cannot be ablated on the token side and is dropped (recorded in ``params``).
"""
from __future__ import annotations

import numpy as np

from ..models.adapter import PreparedInput, VisionLanguageModel
from ..types import Regions, Sample

PROTOCOLS = ("feature-ward", "grid", "superpixel", "gt-boxes")
K_RANGE = (16, 128)


def make_regions(protocol: str, model: VisionLanguageModel, prepared: PreparedInput, k: int = 16,
                 sample: Sample | None = None, backbone: str | None = None) -> tuple[Regions, str | None]:
    """Return the regions and a note when K had to be clamped to what the image allows."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown region protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if not K_RANGE[0] <= k <= K_RANGE[1] and protocol != "gt-boxes":
        raise ValueError(f"K={k} is outside {K_RANGE[0]}–{K_RANGE[1]}")
    boxes = model.visual_token_boxes(prepared)
    size = prepared.image.size
    n_tokens = prepared.n_visual_tokens
    note = None
    if k > n_tokens and protocol != "gt-boxes":
        note = f"K={k} clamped to {n_tokens}: the image has only {n_tokens} visual tokens"
        k = n_tokens
    if protocol == "grid":
        labels, params = _grid_labels(prepared.visual_grid, k), {}
        return _from_token_labels(labels, boxes, size, protocol, {"k": k, **params}), note
    if protocol == "feature-ward":
        feats = _backbone_features(backbone, prepared) if backbone else model.visual_features(prepared)
        labels = _ward_labels(feats, prepared.visual_grid, k)
        return _from_token_labels(labels, boxes, size, protocol, {"k": k, "features": backbone or "model"}), note
    if protocol == "superpixel":
        from skimage.segmentation import slic

        label_map = slic(np.asarray(prepared.image), n_segments=k, compactness=10.0, start_label=0)
        return _from_pixel_labels(label_map, boxes, protocol, {"k": k, "compactness": 10.0}), note
    if sample is None or not sample.steps:
        raise ValueError("the gt-boxes protocol needs ground-truth evidence boxes: synthetic samples only")
    label_map = np.zeros(size[::-1], dtype=np.int64)  # 0 = everything no step reads
    for i, step in enumerate(sample.steps, start=1):
        x0, y0, x1, y1 = step.box
        label_map[y0:y1, x0:x1] = i
    return _from_pixel_labels(label_map, boxes, protocol, {"n_boxes": len(sample.steps)}), None


def _grid_labels(grid: tuple[int, int], k: int) -> np.ndarray:
    R, C = grid
    rows = int(np.clip(round(np.sqrt(k * R / C)), 1, R))
    cols = int(np.clip(k // rows, 1, C))
    r, c = np.divmod(np.arange(R * C), C)
    return (r * rows // R) * cols + (c * cols // C)


def _ward_labels(features: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.image import grid_to_graph

    connectivity = grid_to_graph(*grid)
    return AgglomerativeClustering(n_clusters=k, linkage="ward", connectivity=connectivity).fit_predict(features)


def _backbone_features(backbone: str, prepared: PreparedInput) -> np.ndarray:
    """DINO-style patch features resampled onto the model's visual-token grid (nearest patch)."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(backbone)
    net = AutoModel.from_pretrained(backbone).eval()
    inputs = processor(images=prepared.image, return_tensors="pt")
    with torch.no_grad():
        hidden = net(**inputs).last_hidden_state[0]
    h, w = inputs["pixel_values"].shape[-2:]
    patch = net.config.patch_size
    ph, pw = h // patch, w // patch
    patches = hidden[-ph * pw:].reshape(ph, pw, -1).numpy()  # drop CLS / register tokens in front
    R, C = prepared.visual_grid
    ri = ((np.arange(R) + 0.5) * ph / R).astype(int)
    ci = ((np.arange(C) + 0.5) * pw / C).astype(int)
    return patches[ri][:, ci].reshape(R * C, -1)


def _token_pixel_masks(boxes: np.ndarray, size: tuple[int, int]) -> list[tuple[slice, slice]]:
    W, H = size
    out = []
    for x0, y0, x1, y1 in boxes:
        xs = slice(int(np.clip(round(x0), 0, W)), int(np.clip(round(x1), 0, W)))
        ys = slice(int(np.clip(round(y0), 0, H)), int(np.clip(round(y1), 0, H)))
        out.append((ys, xs))
    return out


def _from_token_labels(labels, boxes, size, protocol, params) -> Regions:
    ids = np.unique(labels)
    token_matrix = labels[None, :] == ids[:, None]
    masks = np.zeros((len(ids), size[1], size[0]), dtype=bool)
    for n, (ys, xs) in enumerate(_token_pixel_masks(boxes, size)):
        masks[int(np.searchsorted(ids, labels[n])), ys, xs] = True
    return Regions(masks, token_matrix, protocol, {**params, "k": len(ids)})


def _from_pixel_labels(label_map, boxes, protocol, params) -> Regions:
    H, W = label_map.shape
    n_labels = int(label_map.max()) + 1
    owner = np.empty(len(boxes), dtype=np.int64)
    for n, (ys, xs) in enumerate(_token_pixel_masks(boxes, (W, H))):
        owner[n] = np.bincount(label_map[ys, xs].ravel(), minlength=n_labels).argmax()
    kept = np.unique(owner)
    token_matrix = owner[None, :] == kept[:, None]
    masks = label_map[None] == kept[:, None, None]
    return Regions(masks, token_matrix, protocol, {**params, "k": len(kept), "dropped": n_labels - len(kept)})
