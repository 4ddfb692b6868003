"""Calibration: do the model's probabilities mean what they say? Reliability diagram, expected calibration
error (ECE) with a bootstrap 95% interval, Brier score and log loss, on the evaluation population
(tasks/techniques/population.py). The check passes when the whole interval is within the bound, fails when the
whole interval is over it, and is not assessable otherwise or on fewer than MIN_ROWS rows.

Multi-class models are assessed on the top label (confidence = the largest probability, outcome =
whether that class is right); binary models on the positive class (tasks/techniques/positive.py).
ECE uses BINS equal-width bins: sum over bins of (rows in bin / rows) * |outcome rate - mean confidence|.

File ``analysis/calibration.parquet``, one row per bin: bin_low, bin_high, n_rows, mean_confidence,
outcome_rate (accuracy for top-label), gap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss

from tasks.model.run_model import load_run_model
from tasks.report import validator_figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.checks import SECTION_PERFORMANCE, Check
from tasks.run.formats import write_frame
from tasks.steps.model_card import threshold
from tasks.techniques.population import evaluation_population
from tasks.techniques.positive import run_positive_index

BINS = 10
BOOTSTRAP = 500  # resamples for the ECE interval
MIN_ROWS = 100  # fewer rows cannot judge calibration in ten bins


def reliability_table(confidence: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per equal-width confidence bin: rows, mean confidence, observed outcome rate (empty bins left out)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n_rows": int(members.sum()),
                         "mean_confidence": float(confidence[members].mean()),
                         "outcome_rate": float(outcome[members].mean())})
    table = pd.DataFrame(rows)
    table["gap"] = table["outcome_rate"] - table["mean_confidence"]
    return table


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> float:
    table = reliability_table(confidence, outcome, bins)
    return float((table["n_rows"] * table["gap"].abs()).sum() / len(confidence))


def ece_interval(confidence: np.ndarray, outcome: np.ndarray, seed: int,
                 n_boot: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile bootstrap interval of the ECE over the rows."""
    rng = np.random.default_rng(seed)
    n = len(confidence)
    values = [expected_calibration_error(confidence[idx], outcome[idx])
              for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def assess_calibration(probs: np.ndarray, labels: np.ndarray, positive: int | None, seed: int) -> dict:
    """Confidence and outcome per row (top label, or the positive class when `positive` is given) and the scores."""
    k = probs.shape[1]
    if positive is None:
        confidence, outcome, kind = probs.max(1), (probs.argmax(1) == labels).astype(float), "top label"
    else:
        confidence, outcome, kind = probs[:, positive], (labels == positive).astype(float), "positive class"
    clipped = np.clip(probs, 1e-12, 1.0)
    clipped = clipped / clipped.sum(1, keepdims=True)
    if k == 2:
        scored = 1 if positive is None else positive
        brier = brier_score_loss(labels == scored, probs[:, scored])
    else:  # the multi-class Brier score: mean squared distance to the one-hot label
        brier = float(((probs - np.eye(k)[labels]) ** 2).sum(1).mean())
    low, high = ece_interval(confidence, outcome, seed)
    return {"kind": kind, "confidence": confidence, "outcome": outcome,
            "ece": expected_calibration_error(confidence, outcome), "ece_low": low, "ece_high": high,
            "brier": float(brier), "log_loss": float(log_loss(labels, clipped, labels=np.arange(k)))}


def calibration_judgement(scores: dict, bound: float, n_rows: int) -> str:
    """Why the ECE cannot judge against `bound`, or "" when it can: too few rows, or an interval on both sides of
    the bound (the ECE alone, on a small sample, would pass or fail by chance)."""
    if n_rows < MIN_ROWS:
        return f"{n_rows} rows, fewer than the {MIN_ROWS} an expected calibration error needs"
    if scores["ece_low"] <= bound < scores["ece_high"]:
        return (f"the 95% interval of the expected calibration error, {scores['ece_low']:.3f} to "
                f"{scores['ece_high']:.3f}, lies on both sides of the bound {bound:g}")
    return ""


def check_calibration(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Calibration of the model's probabilities on the evaluation population, held to the model card's ECE
    threshold: passed when the whole 95% interval is within it, failed when the whole interval is over it."""
    model = load_run_model(files["model"])
    val, population = evaluation_population(files, model.record["source"] == "supplied")
    positive = run_positive_index(files["run_record"], val.class_names)
    scores = assess_calibration(model.predict_proba(val.inputs), val.labels, positive, seed)
    table = reliability_table(scores["confidence"], scores["outcome"])
    bound = threshold(files["card_record"], "calibration.ece")
    subject = f"'{val.class_names[positive]}'" if positive is not None else "the top label"
    check = Check("calibration.ece", "Calibration", f"expected calibration error ({scores['kind']})",
                  scores["ece"], bound, "at most", SECTION_PERFORMANCE,
                  f"The model's probabilities for {subject} are miscalibrated: expected calibration error "
                  f"{scores['ece']:.3f} (95% CI {scores['ece_low']:.3f} to {scores['ece_high']:.3f}) is over "
                  f"{bound}.", not_assessable=calibration_judgement(scores, bound, len(val.labels)))
    return {"files": {"calibration": write_frame(layout.path(run_dir, "calibration"), table)},
            "checks": [check.to_json()], "n_rows": len(val.labels), "subject": subject, "population": population,
            **{k: v for k, v in scores.items() if k not in ("confidence", "outcome")}}


def calibration_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(file_of(result, "calibration"))
    figure = validator_figures.reliability_diagram(table, result["ece"], result["subject"],
                                                   data.figure("calibration.png"))
    return {**{k: v for k, v in result.items() if k not in ("files", "checks")}, "figure": data.rel(figure),
            "bins": table.to_dict("records")}
