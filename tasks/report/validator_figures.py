"""Figures of the validators' sections: calibration, robustness, fairness, the challenger, outcomes over time.

Names from the data (classes, groups) are shortened by figures.cut, and bar and tick labels by
figures.short_labels (kept distinct); figures.py turns mathtext off for every text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.report.figures import cut, plt, save_figure, short_labels


def reliability_diagram(bins: pd.DataFrame, ece: float, subject: str, path: Path) -> Path:
    """Observed outcome rate against mean confidence per bin (the diagonal is perfect calibration), and how
    many rows fall in each bin."""
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.2, 4.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins["bin_high"] - bins["bin_low"]
    ax.bar(bins["bin_low"], bins["outcome_rate"], width=width, align="edge", color="#4c72b0", edgecolor="white",
           label="observed")
    ax.bar(bins["bin_low"], bins["mean_confidence"] - bins["outcome_rate"], bottom=bins["outcome_rate"],
           width=width, align="edge", color="#c44e52", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency", fontsize=7)
    ax.set_title(f"reliability of {cut(subject, 30)} (ECE {ece:.3f})", fontsize=8)
    ax.legend(fontsize=6, loc="upper left")
    counts.bar(bins["bin_low"], bins["n_rows"], width=width, align="edge", color="#8c8c8c", edgecolor="white")
    counts.set_xlim(0, 1)
    counts.set_xlabel("predicted probability (mean per bin)", fontsize=7)
    counts.set_ylabel("rows", fontsize=7)
    for axis in (ax, counts):
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def robustness_curves(curves: pd.DataFrame, drop: float, path: Path) -> Path:
    """Accuracy against relative strength, one line per perturbation; the breaking line `drop` below baseline."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    baseline = float(curves["accuracy"].iloc[0])
    for name, curve in curves.groupby("perturbation", sort=False):
        ax.plot(curve["strength"], curve["accuracy"], "-o", markersize=3, label=cut(name, 30))
    ax.axhline(baseline - drop, color="#c44e52", linestyle="--", linewidth=0.8,
               label=f"{drop:.0%} below unperturbed ({baseline:.3f})")
    ax.set_xlabel("relative strength (1 = the strongest level tested)", fontsize=7)
    ax.set_ylabel("validation accuracy", fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def fairness_bars(per_group: pd.DataFrame, path: Path, most_classes: int = 4) -> Path:
    """Selection rate, true and false positive rate per group, one panel per attribute (the classes of
    interest side by side; at most `most_classes` of them)."""
    attributes = list(dict.fromkeys(per_group["attribute"]))
    fig, axes = plt.subplots(len(attributes), 1, figsize=(6, 2.2 * len(attributes)), squeeze=False)
    for ax, attribute in zip(axes[:, 0], attributes):
        rows = per_group[per_group["attribute"] == attribute]
        classes = list(dict.fromkeys(rows["class_name"]))[:most_classes]
        rows = rows[rows["class_name"].isin(classes)]
        labels = short_labels([f"{cut(c, 12)} | {cut(g, 14)} (n={n})"
                               for c, g, n in zip(rows["class_name"], rows["group"], rows["support"])], 60)
        y = np.arange(len(rows))
        for offset, (metric, color) in enumerate((("selection_rate", "#4c72b0"), ("tpr", "#55a868"),
                                                  ("fpr", "#c44e52"))):
            ax.barh(y + (offset - 1) * 0.27, rows[metric], height=0.27, color=color,
                    label={"selection_rate": "selection rate", "tpr": "true positive rate",
                           "fpr": "false positive rate"}[metric])
        ax.set_yticks(y, labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"by {cut(attribute, 40)}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def challenger_bars(rows: pd.DataFrame, class_names: list[str], path: Path) -> Path:
    """Accuracy per true class, champion beside challenger."""
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(class_names) + 1.0))
    y = np.arange(len(class_names))
    for offset, (column, color) in enumerate((("champion", "#4c72b0"), ("challenger", "#dd8452"))):
        right = rows[column].to_numpy() == rows["label"].to_numpy()
        per_class = [right[rows["label"].to_numpy() == k].mean() if (rows["label"] == k).any() else np.nan
                     for k in range(len(class_names))]
        ax.barh(y + (offset - 0.5) * 0.4, per_class, height=0.4, color=color, label=column)
    ax.set_yticks(y, short_labels(class_names, 20), fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("validation accuracy per true class", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def outcomes_over_time(history: pd.DataFrame, path: Path) -> Path:
    """Each key metric across the runs of the dataset, oldest first."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    x = np.arange(len(history))
    for metric in [c for c in history.columns if c not in ("run", "date", "current")]:
        ax.plot(x, history[metric], "-o", markersize=3, label=metric.replace("_", " "))
    ax.set_xticks(x, [cut(d, 16) for d in history["date"]], fontsize=6, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)
