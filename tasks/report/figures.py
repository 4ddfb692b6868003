"""Figures for the report, written as PNG files into the run directory (matplotlib, Agg)."""

from __future__ import annotations

import functools
import unicodedata
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# Every text is drawn as it is: class, feature and group names come from the data, and "$...$" in one must
# neither start mathtext (an invalid formula would crash the report step) nor silently change the label.
matplotlib.rcParams["text.parse_math"] = False
# A name the font cannot draw is reported once, in Limitations (`undrawable`), not as a warning per figure.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from shap.plots.colors import red_transparent_blue  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from tasks.run.artifacts import atomic_path  # noqa: E402

DPI = 110


@functools.cache
def font() -> tuple[str, frozenset[int]]:
    """The family name of the font the figures draw text with (the report's CSS names the same first) and the
    code points it has glyphs for."""
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))
    with TTFont(path, lazy=True) as face:
        return face["name"].getBestFamilyName(), frozenset(face.getBestCmap())


def undrawable(text: str) -> str:
    """The characters of `text` that the figures' font has no glyph for (drawn as boxes), each once, in order.
    Spaces and invisible characters draw nothing and are not counted."""
    charset = font()[1]
    return "".join(dict.fromkeys(ch for ch in text
                                 if ord(ch) not in charset and unicodedata.category(ch)[0] not in "CZ"))


def short_labels(names, width: int) -> list[str]:
    """Labels of at most `width` characters for `names`, as distinct as the names are: a long name is cut with
    an ellipsis, keeping its start, or its start and its end when the starts alone would read the same; labels
    still the same get " [2]", " [3]", ... Figures place one bar per label, so equal labels would merge bars."""
    names = [str(name) for name in names]
    labels = [cut(n, width) for n in names]
    if len(set(labels)) < len(set(names)):
        head = max((width - 1) // 2, 1)
        labels = [n if len(n) <= width else n[:head] + "…" + n[len(n) - (width - 1 - head):] for n in names]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} [{seen[label]}]"
    return labels


def cut(text, width: int) -> str:
    """User text as it is drawn (mathtext is off, above), or its first `width - 1` characters and an ellipsis."""
    text = str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def save_figure(fig: plt.Figure, path: Path, tight: bool = True) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path


def to_display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] to what imshow takes: (H, W) for one channel, (H, W, 3) for RGB."""
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


def sample_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, per_class: int = 8) -> Path:
    """A row of up to `per_class` training images for each class."""
    n_classes = len(class_names)
    fig, axes = plt.subplots(n_classes, per_class, figsize=(per_class * 0.8, n_classes * 0.85), squeeze=False)
    titles = short_labels(class_names, 20)
    for k, row in enumerate(axes):
        idx = np.flatnonzero(labels == k)[:per_class]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(to_display(images[idx[j]]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(titles[k], fontsize=7, loc="left")
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: Path) -> Path:
    size = max(3.5, 0.45 * len(class_names) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(class_names))),
        display_labels=short_labels(class_names, 14), ax=ax, colorbar=False, cmap="Blues",
    )
    ax.set_title("validation confusion matrix", fontsize=9)
    ax.tick_params(labelsize=7)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return save_figure(fig, path)


class ShapImagePlots:
    """shap's image plot, one PNG per image: the image, then one map per class on a shared red-blue scale.

    The figure and its axes are made once and redrawn with each image's data (half the time of a new
    figure per image, which is what a report with many explained images spends most of its time on).
    """

    def __init__(self, n_classes: int):
        self.fig, axes = plt.subplots(1, n_classes + 1, figsize=(1.25 * (n_classes + 1), 1.9), squeeze=False)
        self.axes = axes[0]
        blank = np.zeros((2, 2))
        self.image = self.axes[0].imshow(blank, cmap="gray", vmin=0, vmax=1)
        self.backgrounds = [ax.imshow(blank, cmap="gray", alpha=0.15) for ax in self.axes[1:]]
        self.maps = [ax.imshow(blank, cmap=red_transparent_blue, vmin=-1, vmax=1) for ax in self.axes[1:]]
        for ax in self.axes:
            ax.axis("off")
        bar = self.fig.colorbar(self.maps[-1], ax=list(self.axes), orientation="horizontal", fraction=0.06, pad=0.04,
                                aspect=60)
        bar.set_label("SHAP value (red raises the class probability, blue lowers it)", fontsize=6)
        bar.ax.tick_params(labelsize=5)

    def draw(self, image: np.ndarray, values: np.ndarray, titles: list[str], path: Path, heading: str) -> Path:
        """values: (K, C, H, W); each map is the sum over channels, red pushes the class up, blue down."""
        maps = values.sum(1)  # (K, H, W)
        limit = float(np.nanpercentile(np.abs(maps), 99.9)) or 1e-12
        shown = to_display(image)
        self.image.set_data(shown)
        self.image.set_extent((-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5))
        self.axes[0].set_title(heading, fontsize=6)
        for ax, background, artist, m, title in zip(self.axes[1:], self.backgrounds, self.maps, maps, titles):
            for layer, data in ((background, image.mean(0)), (artist, m)):
                layer.set_data(data)
                layer.set_extent((-0.5, data.shape[1] - 0.5, data.shape[0] - 0.5, -0.5))
            artist.set_clim(-limit, limit)
            ax.set_title(title, fontsize=6)
        with atomic_path(path) as tmp:
            self.fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        return path

    def close(self) -> None:
        plt.close(self.fig)


def shap_image_plot(image: np.ndarray, values: np.ndarray, titles: list[str], path: Path, heading: str) -> Path:
    """shap's image plot for one image (see `ShapImagePlots`); values: (K, C, H, W)."""
    plots = ShapImagePlots(len(values))
    try:
        return plots.draw(image, values, titles, path, heading)
    finally:
        plots.close()


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def _signed_colors(values: np.ndarray) -> list[str]:
    return ["#d62728" if v > 0 else "#1f77b4" for v in values]


def importance_bars(table: pd.DataFrame, path: Path, title: str, top: int = 20) -> Path:
    """Permutation importance: the mean accuracy drop per group with its 95% confidence interval."""
    shown = table.sort_values("importance_mean", ascending=False).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(shown) + 0.9))
    err = np.vstack([shown["importance_mean"] - shown["ci_low"], shown["ci_high"] - shown["importance_mean"]])
    ax.barh(short_labels(shown["name"], 40), shown["importance_mean"], xerr=err, color="#4c72b0",
            error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("drop in validation accuracy when shuffled (mean, 95% CI)", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def pdp_ice(curves: pd.DataFrame, class_names: list[str], path: Path, max_ice: int = 60) -> Path:
    """One panel per feature: ICE curves (thin) and the partial dependence (thick) of the class probability."""
    features = list(dict.fromkeys(curves["feature"]))
    fig, axes = plt.subplots(1, len(features), figsize=(2.6 * len(features), 2.5), squeeze=False)
    short, titles = short_labels(class_names, 14), short_labels(features, 32)
    for ax, feature, title in zip(axes[0], features, titles):
        rows = curves[curves["feature"] == feature]
        classes = sorted(rows["class_index"].unique())
        focus = classes[-1]
        ice = rows[(rows["row"] >= 0) & (rows["class_index"] == focus)]
        for _, curve in list(ice.groupby("row"))[:max_ice]:
            ax.plot(curve["grid_value"], curve["probability"], color="#999999", linewidth=0.4, alpha=0.5)
        for k in classes:
            average = rows[(rows["row"] < 0) & (rows["class_index"] == k)]
            ax.plot(average["grid_value"], average["probability"], linewidth=2,
                    label=f"PD {short[k]}" if len(classes) > 1 else "partial dependence")
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("feature value", fontsize=6)
        ax.set_ylabel(f"P({short[focus]})" if len(classes) == 1 else "probability", fontsize=6)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=5)
    fig.tight_layout()
    return save_figure(fig, path)


def global_importance_bars(mean_abs: np.ndarray, feature_names: list[str], class_names: list[str], path: Path,
                           top: int = 15) -> Path:
    """Mean |SHAP| per feature, stacked by class, for the `top` features overall."""
    order = np.argsort(-mean_abs.sum(0))[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.27 * len(order) + 1))
    labels, legend = short_labels([feature_names[i] for i in order], 40), short_labels(class_names, 16)
    left = np.zeros(len(order))
    for k in range(len(class_names)):
        ax.barh(labels, mean_abs[k, order], left=left, label=legend[k])
        left += mean_abs[k, order]
    stacked = " (stacked by class)" if len(class_names) > 1 else f" for '{short_labels(class_names, 30)[0]}'"
    ax.set_xlabel("mean |SHAP value| over the explained rows" + stacked, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def global_importance_maps(maps: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Mean |SHAP| per pixel (summed over channels), one map per class, on one scale."""
    fig, axes = plt.subplots(1, len(maps), figsize=(1.2 * len(maps), 1.7), squeeze=False)
    limit = float(maps.max()) or 1e-12
    for ax, m, title in zip(axes[0], maps, short_labels(class_names, 12)):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=limit)
        ax.set_title(title, fontsize=6)
        ax.axis("off")
    bar = fig.colorbar(im, ax=list(axes[0]), orientation="horizontal", fraction=0.06, pad=0.04, aspect=60)
    bar.set_label("mean |SHAP value| per pixel", fontsize=6)
    bar.ax.tick_params(labelsize=5)
    return save_figure(fig, path)


def feature_bars(values: np.ndarray, feature_names: list[str], title: str, path: Path, top: int = 10,
                 xlabel: str = "SHAP value (red raises the class probability, blue lowers it)") -> Path:
    """Signed attributions of one row's top `top` features by magnitude."""
    order = np.argsort(-np.abs(values))[:top][::-1]
    fig, ax = plt.subplots(figsize=(5.6, 0.22 * len(order) + 0.8))
    ax.barh(short_labels([feature_names[i] for i in order], 40), values[order], color=_signed_colors(values[order]))
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=7)
    ax.set_xlabel(xlabel, fontsize=6)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def attribution_heatmap(matrix: np.ndarray, row_labels: list[str], feature_names: list[str], path: Path,
                        title: str, top: int = 15) -> Path:
    """Rows x features of signed attributions (the `top` features by mean magnitude), red-blue."""
    order = np.argsort(-np.abs(matrix).mean(0))[:top]
    shown = matrix[:, order]
    limit = float(np.abs(shown).max()) or 1e-12
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(row_labels) + 1.8))
    im = ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(order)), short_labels([feature_names[i] for i in order], 24), rotation=60, ha="right",
                  fontsize=5)
    ax.set_yticks(range(len(row_labels)), short_labels(row_labels, 30), fontsize=5)
    ax.set_title(title, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.03).ax.tick_params(labelsize=5)
    fig.tight_layout()
    return save_figure(fig, path)


def method_maps(images: np.ndarray, maps: dict[str, np.ndarray], titles: list[str], path: Path) -> Path:
    """One row per image: the image, then each method's map (n, H, W) on its own red-blue scale."""
    n, cols = len(images), len(maps) + 1
    fig, axes = plt.subplots(n, cols, figsize=(1.35 * cols, 1.35 * n), squeeze=False)
    for i, row in enumerate(axes):
        row[0].imshow(to_display(images[i]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(titles[i], fontsize=5)
        for ax, (method, values) in zip(row[1:], maps.items()):
            limit = float(np.abs(values[i]).max()) or 1e-12
            ax.imshow(images[i].mean(0), cmap="gray", alpha=0.15)
            ax.imshow(values[i], cmap=red_transparent_blue, vmin=-limit, vmax=limit)
            ax.set_title(method, fontsize=6)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def agreement_matrix(matrix: pd.DataFrame, path: Path) -> Path:
    """Mean Spearman correlation between methods (symmetric, 1 on the diagonal)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    im = ax.imshow(matrix.to_numpy(), cmap="RdYlGn", vmin=-1, vmax=1)
    labels = list(matrix.columns)
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    for (i, j), value in np.ndenumerate(matrix.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title("mean rank correlation of attributions", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04).ax.tick_params(labelsize=5)
    fig.tight_layout()
    return save_figure(fig, path)


def slice_bars(slices: pd.DataFrame, overall: float, path: Path) -> Path:
    """Accuracy per slice, grouped by slicing; flagged slices in red, the overall accuracy as a line."""
    shown = slices[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(shown) + 1.1))
    labels = short_labels([f"{cut(s, 18)}: {cut(v, 22)} (n={n})"
                           for s, v, n in zip(shown["slicing"], shown["slice"], shown["n_rows"])], 60)
    ax.barh(labels, shown["accuracy"], color=["#d62728" if f else "#4c72b0" for f in shown["flagged"]])
    ax.axvline(overall, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(0.0, 1.0)  # from zero: a small drop looks small
    ax.set_xlabel(f"accuracy on the evaluation rows (red: flagged; dashed: overall {overall:.3f})", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def randomisation_curve(table: pd.DataFrame, threshold: float, path: Path) -> Path:
    """Mean Spearman (signed and of magnitudes) with the trained maps as more layers are randomised."""
    steps = table.groupby("step").agg(layer=("layer", "first"), signed=("spearman", "mean"),
                                      absolute=("spearman_abs", "mean")).reset_index()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(steps["step"], steps["signed"], "-o", markersize=3, label="Spearman (signed)")
    ax.plot(steps["step"], steps["absolute"], "-s", markersize=3, label="Spearman of |attribution|")
    ax.axhline(threshold, color="#c44e52", linestyle="--", linewidth=0.8, label=f"flag above {threshold}")
    ax.set_xticks(steps["step"], [f"-{layer}" for layer in steps["layer"]], fontsize=6)
    ax.set_xlabel("layers re-initialised, from the output down (cumulative)", fontsize=7)
    ax.set_ylabel("correlation with the trained model's map", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def deletion_insertion_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Mean probability of the predicted class as pixels are deleted / inserted, attribution vs random order."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.5))
    for ax, curve in zip(axes, ("deletion", "insertion")):
        rows = curves[curves["curve"] == curve]
        for order, style in (("attribution", "-"), ("random", "--")):
            mean = rows[rows["order"] == order].groupby("fraction")["probability"].mean()
            ax.plot(mean.index, mean.to_numpy(), style, label=f"{order} order")
        ax.set_title(f"{curve}: pixels {'removed' if curve == 'deletion' else 'added'}, most attributed first",
                     fontsize=7)
        ax.set_xlabel("fraction of pixels", fontsize=6)
        ax.set_ylabel("probability of the predicted class", fontsize=6)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def weight_histograms(layers: dict[str, np.ndarray], path: Path, most: int = 32) -> Path:
    """A histogram of each weight matrix or kernel (the first `most`), one panel each."""
    layers = list(layers.items())[:most]
    cols = 4
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 1.9 * rows), squeeze=False)
    for ax, (name, weight) in zip(axes.ravel(), layers):
        ax.hist(weight.ravel(), bins=40, color="#4c72b0")
        ax.set_title(f"{name[-40:]} {tuple(weight.shape)}", fontsize=6)
        ax.tick_params(labelsize=5)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def first_conv_filters(weights: np.ndarray, path: Path) -> Path:
    """The first convolution's filters (out, in, kh, kw) as small images (RGB for 3 input channels, else the
    channel mean)."""
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
    return save_figure(fig, path)
