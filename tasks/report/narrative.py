"""The report's words: what a decision or a mistake shows, in sentences a validator reads."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.model.reference import CNNConfig
from tasks.report.figures import short_labels
from tasks.run.formats import Split

REASONS_SHOWN = 3  # features named in a table row's reason codes
REGIONS = [["upper left", "upper centre", "upper right"], ["middle left", "centre", "middle right"],
           ["lower left", "lower centre", "lower right"]]


def describe_mistake(values: np.ndarray, true: int, pred: int, names: list[str], probs: np.ndarray,
                     expected: list[float]) -> str:
    """One paragraph, in words, on what the SHAP maps show for a misclassified image."""
    maps = values.sum(1)  # (K, H, W)
    pred_map = maps[pred]
    positive = np.clip(pred_map, 0, None)
    h, w = pred_map.shape
    cells = np.array([[positive[i * h // 3:(i + 1) * h // 3, j * w // 3:(j + 1) * w // 3].sum() for j in range(3)]
                      for i in range(3)])
    share = cells.max() / positive.sum() if positive.sum() > 0 else 0.0
    i, j = np.unravel_index(cells.argmax(), cells.shape)
    return (
        f"The model gave '{names[pred]}' probability {probs[pred]:.2f} (background average "
        f"{expected[pred]:.2f}) and the true class '{names[true]}' {probs[true]:.2f} (average {expected[true]:.2f}). "
        f"The pixels that pushed it towards '{names[pred]}' lie mostly in the {REGIONS[i][j]} of the image "
        f"({share:.0%} of the positive attribution); the net SHAP sum for '{names[true]}' is "
        f"{maps[true].sum():+.3f}, for '{names[pred]}' {pred_map.sum():+.3f}."
    )


def describe_table_mistake(values: np.ndarray, row: np.ndarray, true: int, pred: int, names: list[str],
                           probs: np.ndarray, feature_names: list[str]) -> str:
    """One paragraph, in words, on which feature values pushed a table row to the wrong class."""
    towards = reason_codes(values[pred], row, feature_names, REASONS_SHOWN)
    against = reason_codes(-values[true], row, feature_names, REASONS_SHOWN)
    return (f"The model gave '{names[pred]}' probability {probs[pred]:.2f} and the true class '{names[true]}' "
            f"{probs[true]:.2f}. Pushing towards '{names[pred]}': {'; '.join(towards) or 'no feature'}. "
            f"Lowering '{names[true]}' (SHAP values shown for '{names[true]}' with their sign flipped): "
            f"{'; '.join(against) or 'no feature'}.")


def model_description(config) -> str:
    if isinstance(config, CNNConfig):
        return (f"Reference CNN: {len(config.widths)} conv layers, {config.num_classes} classes, "
                f"{config.in_channels} input channel(s)")
    return (f"Reference MLP: standardisation, Dense {config.hidden} + ReLU, Dense {config.num_classes}; "
            f"{config.in_features} features")


def feature_summary(split: Split) -> list[dict]:
    """Per feature column of a table split: mean, standard deviation, minimum and maximum."""
    x = split.inputs.astype(np.float64)
    return [{"name": name, "mean": float(x[:, j].mean()), "std": float(x[:, j].std()), "min": float(x[:, j].min()),
             "max": float(x[:, j].max())} for j, name in enumerate(split.feature_names)]



def row_labels(explained: pd.DataFrame, names: list[str]) -> list[str]:
    short = short_labels(names, 12)
    return [f"{sid[-22:]} ({short[k]})" for sid, k in zip(explained["source_id"], explained["predicted"])]


def reason_codes(values: np.ndarray, row: np.ndarray, feature_names: list[str], count: int = REASONS_SHOWN) -> list[str]:
    """The `count` features that pushed a decision most towards its class, in words."""
    order = [i for i in np.argsort(-values) if values[i] > 0][:count]
    return [f"{feature_names[i]} = {row[i]:.4g} (SHAP {values[i]:+.3f})" for i in order]
