"""Feature groups: the units that global and model-agnostic methods work on, and that methods are compared on.

For tables a group is one feature column. For images a group is a square region of pixels
(all channels), or one colour channel: permuting or masking single pixels of a 32x32 image
tells nothing, so permutation importance, Kernel SHAP and method agreement work on regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGION_GRID = 4  # images: permutation importance and method agreement on a 4x4 grid of regions
KERNEL_GRID = REGION_GRID  # images: every Kernel SHAP of a run (the technique, the SHAP stage's fallback), LIME


@dataclass(frozen=True)
class FeatureGroups:
    """Named groups of input positions; `masks[g]` marks group g's positions in the flattened input."""

    names: list[str]
    masks: np.ndarray  # (n_groups, input_size) bool
    input_shape: tuple[int, ...]  # (C, H, W) or (n_features,)

    def aggregate(self, values: np.ndarray) -> np.ndarray:
        """Sum attributions over each group: (..., *input_shape) -> (..., n_groups)."""
        lead = values.shape[: values.ndim - len(self.input_shape)]
        flat = values.reshape(*lead, self.masks.shape[1]).astype(np.float64)
        return flat @ self.masks.T.astype(np.float64)

    def spread(self, values: np.ndarray) -> np.ndarray:
        """Each group's value shared evenly by its positions: (..., n_groups) -> (..., *input_shape)."""
        share = self.masks / self.masks.sum(1, keepdims=True)
        return (values @ share).reshape(*values.shape[:-1], *self.input_shape)


def feature_columns(feature_names: list[str]) -> FeatureGroups:
    """One group per table column."""
    return FeatureGroups(list(feature_names), np.eye(len(feature_names), dtype=bool), (len(feature_names),))


def image_regions(shape: tuple[int, int, int], grid: int) -> FeatureGroups:
    """A grid x grid partition of (C, H, W) images into regions, each spanning every channel."""
    c, h, w = shape
    rows = np.minimum(np.arange(h) * grid // h, grid - 1)
    cols = np.minimum(np.arange(w) * grid // w, grid - 1)
    cell = (rows[:, None] * grid + cols[None, :])  # (H, W) region index
    masks = np.stack([np.broadcast_to(cell == g, (c, h, w)).reshape(-1) for g in range(grid * grid)])
    names = [f"region r{g // grid + 1}c{g % grid + 1}" for g in range(grid * grid)]
    return FeatureGroups(names, masks, shape)


def image_channels(shape: tuple[int, int, int]) -> FeatureGroups:
    """One group per colour channel."""
    c, h, w = shape
    names = ["gray"] if c == 1 else (["red", "green", "blue"] if c == 3 else [f"channel {i}" for i in range(c)])
    masks = np.stack([np.arange(c * h * w) // (h * w) == i for i in range(c)])
    return FeatureGroups(names, masks, shape)


def comparison_groups(modality: str, shape: list[int], feature_names: list[str]) -> FeatureGroups:
    """The groups methods are compared on: columns for tables, the REGION_GRID regions for images."""
    return feature_columns(feature_names) if modality == "table" else image_regions(tuple(shape), REGION_GRID)
