"""Sliced model analysis: accuracy per slice of the evaluation population (the rows of the headline metrics,
tasks/techniques/population.py), so a validator sees where the model is weak.

Slicings: the true class; for tables, quartile bins of the most important features (permutation importance).
(Bins of the model's confidence belong to calibration.) A slice is flagged only when its shortfall is significant:
at least MIN_ERRORS errors, accuracy more than GAP below the overall accuracy, and the one-sided 95% upper bound of
its accuracy (Clopper-Pearson) below the overall accuracy. A small slice with one error is not a finding.

File ``analysis/slices.parquet``, one row per slice: slicing, slice, n_rows, errors, accuracy, accuracy_upper,
mean_confidence, share (of the rows), flagged.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from tasks.model.run_model import load_run_model
from tasks.report import figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.checks import SECTION_PERFORMANCE, Check
from tasks.run.formats import write_frame
from tasks.techniques.population import evaluation_population, upper_bound

TOP_FEATURES = 3  # tables: features sliced into quartiles
MIN_ERRORS = 3  # a slice with fewer errors is shown but never flagged
GAP = 0.05  # accuracy this far below the overall accuracy (and significantly below it) flags a slice


def slice_table(correct: np.ndarray, confidence: np.ndarray, slicings: dict[str, pd.Series]) -> pd.DataFrame:
    """Accuracy per slice; `slicings` maps a slicing's name to each row's slice label."""
    overall = float(correct.mean())
    rows = []
    for slicing, labels in slicings.items():
        for label, members in pd.Series(np.arange(len(correct))).groupby(labels.to_numpy(), sort=True, observed=True):
            idx = members.to_numpy()
            hits = int(correct[idx].sum())
            accuracy, upper = hits / len(idx), upper_bound(hits, len(idx))
            errors = len(idx) - hits
            rows.append({"slicing": slicing, "slice": str(label), "n_rows": len(idx), "errors": errors,
                         "accuracy": accuracy, "accuracy_upper": upper,
                         "mean_confidence": float(confidence[idx].mean()), "share": len(idx) / len(correct),
                         "flagged": bool(errors >= MIN_ERRORS and accuracy < overall - GAP and upper < overall)})
    return pd.DataFrame(rows)


def interval_labels(bins: pd.Series) -> pd.Series:
    """Interval bins as short text, "(0.8, 0.95]": bounds to 4 significant digits, not float32's noise."""
    def label(interval) -> str:
        return f"({interval.left:.4g}, {interval.right:.4g}]" if isinstance(interval, pd.Interval) else str(interval)
    return bins.map(label).astype(str)


def analyse_slices(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Slice the evaluation population by class and (tables) the top features' quartiles."""
    model = load_run_model(files["model"])
    val, population = evaluation_population(files, model.record["source"] == "supplied")
    probs = model.predict_proba(val.inputs)
    correct = probs.argmax(1) == val.labels
    confidence = probs.max(1)
    slicings = {"true class": pd.Series([val.class_names[k] for k in val.labels])}
    if val.modality == "table":
        importance = pd.read_parquet(files["permutation_importance"]).sort_values("importance_mean", ascending=False)
        for name in importance["name"].head(TOP_FEATURES):
            column = pd.Series(val.inputs[:, val.feature_names.index(name)])
            slicings[name] = interval_labels(pd.qcut(column, 4, duplicates="drop"))
    table = slice_table(correct, confidence, slicings)
    overall = float(correct.mean())
    flagged = table[table["flagged"]]
    judgeable = int((table["n_rows"] >= MIN_ERRORS).sum())
    check = Check("slices.weak", "Sliced analysis", f"slices significantly more than {GAP:.0%} below overall "
                  f"accuracy (at least {MIN_ERRORS} errors)", len(flagged), 0, "at most", SECTION_PERFORMANCE,
                  f"{len(flagged)} slice(s) are significantly weaker than the whole.",
                  details=tuple(f"Weak slice: {r.slicing} {r.slice} has accuracy {r.accuracy:.3f} on {r.n_rows} rows "
                                f"({r.errors} errors; 95% upper bound {r.accuracy_upper:.3f}; overall {overall:.3f})."
                                for r in flagged.itertuples()), unit="count",
                  not_assessable="" if judgeable else f"no slice has {MIN_ERRORS} rows or more")
    return {"files": {"slices": write_frame(layout.path(run_dir, "slices"), table)}, "checks": [check.to_json()],
            "overall_accuracy": overall, "n_flagged": len(flagged), "population": population}


def slices_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(file_of(result, "slices"))
    figure = figures.slice_bars(table, result["overall_accuracy"], data.figure("slices.png"))
    return {"figure": data.rel(figure), "rows": table.to_dict("records"), "overall": result["overall_accuracy"],
            "flagged": table[table["flagged"]].to_dict("records"), "gap": GAP, "min_errors": MIN_ERRORS,
            "population": result.get("population", "the validation split")}
