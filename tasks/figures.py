"""Figures for the report, written as PNG files into the run directory (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from shap.plots.colors import red_transparent_blue  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from tasks.artifacts import atomic_path  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def to_display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] to what imshow takes: (H, W) for one channel, (H, W, 3) for RGB."""
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


def sample_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, per_class: int = 8) -> Path:
    """A row of up to `per_class` training images for each class."""
    n_classes = len(class_names)
    fig, axes = plt.subplots(n_classes, per_class, figsize=(per_class * 0.8, n_classes * 0.85), squeeze=False)
    for k, row in enumerate(axes):
        idx = np.flatnonzero(labels == k)[:per_class]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(to_display(images[idx[j]]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(class_names[k][:20], fontsize=7, loc="left")
    return _save(fig, path)


def training_curves(metrics: pd.DataFrame, path: Path) -> Path:
    """Loss, accuracy and macro precision/recall per epoch, training against validation."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for split, style in (("train", "-o"), ("validation", "-s")):
        rows = metrics[metrics["split"] == split]
        axes[0].plot(rows["epoch"], rows["loss"], style, label=split, markersize=3)
        axes[1].plot(rows["epoch"], rows["accuracy"], style, label=split, markersize=3)
        axes[2].plot(rows["epoch"], rows["precision_macro"], style, label=f"precision ({split})", markersize=3)
        axes[2].plot(rows["epoch"], rows["recall_macro"], style, label=f"recall ({split})", markersize=3, alpha=0.6)
    for ax, title in zip(axes, ("cross-entropy loss", "accuracy", "macro precision / recall")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: Path) -> Path:
    size = max(3.5, 0.45 * len(class_names) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(class_names))),
        display_labels=[name[:14] for name in class_names], ax=ax, colorbar=False, cmap="Blues",
    )
    ax.set_title("validation confusion matrix", fontsize=9)
    ax.tick_params(labelsize=7)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return _save(fig, path)


def shap_image_plot(image: np.ndarray, values: np.ndarray, titles: list[str], path: Path, heading: str) -> Path:
    """shap's image plot for one image: the image, then one map per class on a shared red-blue scale.

    values: (K, C, H, W); each map is the sum over channels, red pushes the class up, blue down.
    """
    maps = values.sum(1)  # (K, H, W)
    limit = float(np.nanpercentile(np.abs(maps), 99.9)) or 1e-12
    gray = image.mean(0)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(1.25 * (len(maps) + 1), 1.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(to_display(image), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(heading, fontsize=6)
    for ax, m, title in zip(axes[1:], maps, titles):
        ax.imshow(gray, cmap="gray", alpha=0.15)
        im = ax.imshow(m, cmap=red_transparent_blue, vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=6)
    for ax in axes:
        ax.axis("off")
    bar = fig.colorbar(im, ax=list(axes), orientation="horizontal", fraction=0.06, pad=0.04, aspect=60)
    bar.set_label("SHAP value (red raises the class probability, blue lowers it)", fontsize=6)
    bar.ax.tick_params(labelsize=5)
    return _save(fig, path)


def additivity_histogram(errors: np.ndarray, threshold: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 2.2))
    floor = 1e-12
    ax.hist(np.log10(np.maximum(errors, floor)), bins=20, color="#4c72b0")
    ax.axvline(np.log10(threshold), color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("log10 |sum of SHAP values - (output - expected output)|", fontsize=7)
    ax.set_ylabel("images", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def gradient_grid(images: np.ndarray, saliency: np.ndarray, ig: np.ndarray, titles: list[str], path: Path) -> Path:
    """One row per image: the image, its saliency map and its Integrated Gradients map (summed over channels)."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(4.2, 1.35 * n), squeeze=False)
    for row, image, sal, attr, title in zip(axes, images, saliency, ig, titles):
        row[0].imshow(to_display(image), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(title, fontsize=6)
        row[1].imshow(sal.max(0), cmap="magma")
        row[1].set_title("saliency |grad|", fontsize=6)
        attr_map = attr.sum(0)
        limit = float(np.abs(attr_map).max()) or 1e-12
        row[2].imshow(image.mean(0), cmap="gray", alpha=0.15)
        row[2].imshow(attr_map, cmap=red_transparent_blue, vmin=-limit, vmax=limit)
        row[2].set_title("integrated gradients", fontsize=6)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
