"""Sliced model analysis: validation accuracy per slice, so a validator sees where the model is weak.

Slicings: the true class; the model's confidence (bins of the top probability); for tables,
quartile bins of the most important features (permutation importance). A slice with at least
MIN_ROWS rows whose accuracy is more than GAP below the overall accuracy is flagged.

File ``analysis/slices.parquet``, one row per slice: slicing, slice, n_rows, accuracy,
mean_confidence, share (of the validation rows), flagged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.artifacts import sha256_file, write_parquet_atomic
from tasks.load import read_split
from tasks.model import load_weights
from tasks.train import predict_proba

CONFIDENCE_BINS = [0.0, 0.5, 0.8, 0.95, 1.0]
TOP_FEATURES = 3  # tables: features sliced into quartiles
MIN_ROWS = 10  # smaller slices are shown but never flagged
GAP = 0.05  # accuracy this far below the overall accuracy flags a slice


def slice_table(correct: np.ndarray, confidence: np.ndarray, slicings: dict[str, pd.Series]) -> pd.DataFrame:
    """Accuracy per slice; `slicings` maps a slicing's name to each row's slice label."""
    overall = float(correct.mean())
    rows = []
    for slicing, labels in slicings.items():
        for label, members in pd.Series(np.arange(len(correct))).groupby(labels.to_numpy(), sort=True, observed=True):
            idx = members.to_numpy()
            accuracy = float(correct[idx].mean())
            rows.append({"slicing": slicing, "slice": str(label), "n_rows": len(idx), "accuracy": accuracy,
                         "mean_confidence": float(confidence[idx].mean()), "share": len(idx) / len(correct),
                         "flagged": bool(len(idx) >= MIN_ROWS and accuracy < overall - GAP)})
    return pd.DataFrame(rows)


def analyse_slices(weights_path: Path, validation_path: Path, importance_path: Path, run_dir: Path) -> dict:
    """Slice the validation split by class, confidence and (tables) the top features' quartiles."""
    model, _, _ = load_weights(Path(weights_path))
    val = read_split(Path(validation_path))
    probs = predict_proba(model, val.inputs)
    correct = probs.argmax(1) == val.labels
    confidence = probs.max(1)
    slicings = {
        "true class": pd.Series([val.class_names[k] for k in val.labels]),
        "confidence": pd.cut(pd.Series(confidence), CONFIDENCE_BINS, include_lowest=True),
    }
    if val.modality == "table":
        importance = pd.read_parquet(importance_path).sort_values("importance_mean", ascending=False)
        for name in importance["name"].head(TOP_FEATURES):
            column = pd.Series(val.inputs[:, val.feature_names.index(name)])
            slicings[name] = pd.qcut(column, 4, duplicates="drop").astype(str)
    table = slice_table(correct, confidence, slicings)
    path = write_parquet_atomic(Path(run_dir) / "analysis" / "slices.parquet",
                                pa.Table.from_pandas(table, preserve_index=False))
    return {"slices": {"path": str(path), "sha256": sha256_file(path)}, "overall_accuracy": float(correct.mean()),
            "n_flagged": int(table["flagged"].sum())}
