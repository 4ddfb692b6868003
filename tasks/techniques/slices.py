"""Sliced model analysis: validation accuracy per slice, so a validator sees where the model is weak.

Slicings: the true class; the model's confidence (bins of the top probability); for tables,
quartile bins of the most important features (permutation importance). A slice with at least
MIN_ROWS rows whose accuracy is more than GAP below the overall accuracy is flagged.

File ``analysis/slices.parquet``, one row per slice: slicing, slice, n_rows, accuracy,
mean_confidence, share (of the validation rows), flagged.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from tasks.model.run_model import load_run_model
from tasks.report import figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.checks import SECTION_PERFORMANCE, Check
from tasks.run.formats import read_split, write_frame

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


def interval_labels(bins: pd.Series) -> pd.Series:
    """Interval bins as short text, "(0.8, 0.95]": bounds to 4 significant digits, not float32's noise."""
    def label(interval) -> str:
        return f"({interval.left:.4g}, {interval.right:.4g}]" if isinstance(interval, pd.Interval) else str(interval)
    return bins.map(label).astype(str)


def analyse_slices(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Slice the validation split by class, confidence and (tables) the top features' quartiles."""
    model = load_run_model(files["model"])
    val = read_split(files["validation"])
    probs = model.predict_proba(val.inputs)
    correct = probs.argmax(1) == val.labels
    confidence = probs.max(1)
    slicings = {
        "true class": pd.Series([val.class_names[k] for k in val.labels]),
        "confidence": interval_labels(pd.cut(pd.Series(confidence), CONFIDENCE_BINS, include_lowest=True)),
    }
    if val.modality == "table":
        importance = pd.read_parquet(files["permutation_importance"]).sort_values("importance_mean", ascending=False)
        for name in importance["name"].head(TOP_FEATURES):
            column = pd.Series(val.inputs[:, val.feature_names.index(name)])
            slicings[name] = interval_labels(pd.qcut(column, 4, duplicates="drop"))
    table = slice_table(correct, confidence, slicings)
    overall = float(correct.mean())
    flagged = table[table["flagged"]]
    check = Check("slices.weak", "Sliced analysis", f"slices of at least {MIN_ROWS} rows more than {GAP:.0%} below overall accuracy",
                  len(flagged), 0, "at most", SECTION_PERFORMANCE, f"{len(flagged)} slice(s) are weak.",
                  details=tuple(f"Weak slice: {r.slicing} {r.slice} has accuracy {r.accuracy:.3f} on {r.n_rows} rows "
                                f"(overall {overall:.3f})." for r in flagged.itertuples()), unit="count")
    return {"files": {"slices": write_frame(layout.path(run_dir, "slices"), table)}, "checks": [check.to_json()],
            "overall_accuracy": overall, "n_flagged": len(flagged)}


def slices_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(file_of(result, "slices"))
    figure = figures.slice_bars(table, result["overall_accuracy"], data.figure("slices.png"))
    return {"figure": data.rel(figure), "rows": table.to_dict("records"), "overall": result["overall_accuracy"],
            "flagged": table[table["flagged"]].to_dict("records"), "gap": GAP, "min_rows": MIN_ROWS}
