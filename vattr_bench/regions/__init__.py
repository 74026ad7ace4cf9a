"""Region protocols (how an image is split into K regions) and ablation operators (how a region is removed)."""
from .ablation import (OPERATORS, GroundTruth, ablate_image, ground_truth, random_subsets, single_region_effects,
                       subset_effects, subset_seed)
from .protocols import PROTOCOLS, make_regions

__all__ = ["PROTOCOLS", "make_regions", "OPERATORS", "ablate_image", "single_region_effects", "subset_effects",
           "random_subsets", "subset_seed", "GroundTruth", "ground_truth"]
