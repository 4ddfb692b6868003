"""Inspection of layer weights and biases: per-tensor statistics, histograms, first-layer filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from torch import nn

from tasks.artifacts import atomic_path, write_parquet_atomic

NEAR_ZERO = 1e-3  # |w| below this counts as near zero


def weight_statistics(model: nn.Module) -> pd.DataFrame:
    """One row per parameter tensor: shape, mean, std, min, max, share near zero, L1 and L2 norms."""
    rows = []
    for name, parameter in model.named_parameters():
        values = parameter.detach().cpu().double().numpy().ravel()
        layer, _, kind = name.rpartition(".")
        rows.append({
            "layer": layer, "module": type(model.get_submodule(layer)).__name__, "tensor": kind,
            "shape": "x".join(map(str, parameter.shape)), "count": values.size,
            "mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max(),
            "near_zero_share": float((np.abs(values) < NEAR_ZERO).mean()),
            "l1_norm": float(np.abs(values).sum()), "l2_norm": float(np.sqrt((values ** 2).sum())),
        })
    return pd.DataFrame(rows)


def write_weight_statistics(model: nn.Module, path: Path) -> pd.DataFrame:
    stats = weight_statistics(model)
    write_parquet_atomic(path, pa.Table.from_pandas(stats, preserve_index=False))
    return stats


def weight_histograms(model: nn.Module, path: Path) -> Path:
    """A histogram of the weights of every convolution and linear layer, one panel each."""
    import matplotlib.pyplot as plt

    from tasks.figures import DPI

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    cols = 4
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 1.9 * rows), squeeze=False)
    for ax, (name, module) in zip(axes.ravel(), layers):
        ax.hist(module.weight.detach().cpu().numpy().ravel(), bins=40, color="#4c72b0")
        ax.set_title(f"layer {name}: {type(module).__name__} {tuple(module.weight.shape)}", fontsize=6)
        ax.tick_params(labelsize=5)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def first_conv_filters(model: nn.Module, path: Path) -> Path:
    """The first convolution's filters as small images (RGB for 3 input channels, else the channel mean)."""
    import matplotlib.pyplot as plt

    from tasks.figures import DPI

    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    weights = conv.weight.detach().cpu().numpy()  # (out, in, kh, kw)
    cols = 8
    rows = -(-len(weights) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.75), squeeze=False)
    for ax, w in zip(axes.ravel(), weights):
        scaled = (w - w.min()) / (np.ptp(w) or 1.0)
        ax.imshow(np.transpose(scaled, (1, 2, 0)) if len(scaled) == 3 else scaled.mean(0), cmap="gray",
                  interpolation="nearest")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"first convolution: {len(weights)} filters of {weights.shape[1]}x{weights.shape[2]}x{weights.shape[3]}",
                 fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
