"""Robustness: validation accuracy under perturbations of growing strength, and where the model breaks.

Images: Gaussian noise, blur, brightness, contrast, JPEG compression, small shifts. Tables: Gaussian
noise scaled to each feature's spread (its training standard deviation), and each feature in turn
set to its training mean (as a missing value imputed by the mean would be). Each perturbation has
LEVELS strengths in its own unit, the last one a severe but plausible level; "relative strength" is
a level over the last. A perturbation *breaks* the model at the (interpolated) relative strength
where accuracy falls `robustness.accuracy_drop` below the unperturbed accuracy; the check holds
every perturbation to survive up to `robustness.min_strength` (model card thresholds).

Files ``analysis/robustness.parquet`` (perturbation, unit, level, strength, accuracy, n_rows) and,
for tables, ``analysis/robustness_missing.parquet`` (feature, accuracy, drop).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from tasks.model.run_model import load_run_model
from tasks.report import validator_figures
from tasks.report.sections import TOP_TABLE_ROWS, ReportData, file_of
from tasks.run import layout
from tasks.run.checks import MINOR, SECTION_PERFORMANCE, Check
from tasks.run.formats import read_split, write_frame
from tasks.run.progress import progress_bar
from tasks.steps.model_card import read_card_record, threshold

MAX_ROWS = {"table": 5000, "image": 200}  # validation rows used (a seeded sample when there are more)


@dataclass(frozen=True)
class Perturbation:
    name: str
    unit: str  # what a level means
    levels: tuple[float, ...]  # increasing, the first 0 (no perturbation)
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]  # (inputs, level, rng) -> perturbed


def _noise(x, sigma, rng):
    return np.clip(x + rng.normal(0.0, sigma, x.shape).astype(np.float32), 0.0, 1.0)


def _blur(x, sigma, rng):  # over height and width only: (n, C, H, W)
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma)) if sigma else x


def _brightness(x, delta, rng):
    return np.clip(x + delta, 0.0, 1.0)


def _contrast(x, reduction, rng):
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return mean + (x - mean) * (1.0 - reduction)


def _jpeg(x, loss, rng):
    """Each image through JPEG at quality 100 - loss (one or three channels)."""
    if not loss:
        return x
    out = np.empty_like(x)
    for i, image in enumerate(x):
        pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        pil = Image.fromarray(pixels[0] if len(pixels) == 1 else np.transpose(pixels, (1, 2, 0)))
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(100 - loss))
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
        out[i] = decoded[None] if decoded.ndim == 2 else np.transpose(decoded, (2, 0, 1))
    return out


def _shift(x, fraction, rng):
    """Shifted right and down by `fraction` of the width (sub-pixel: linear interpolation), zeros enter."""
    pixels = fraction * x.shape[-1]
    return ndimage.shift(x, (0, 0, pixels, pixels), order=1, mode="constant", cval=0.0) if pixels else x


def _feature_noise(spread: np.ndarray):
    def apply(x, scale, rng):
        return x + (rng.normal(0.0, 1.0, x.shape) * scale * spread).astype(np.float32)
    return apply


def image_perturbations(channels: int) -> list[Perturbation]:
    found = [Perturbation("Gaussian noise", "standard deviation (pixel range 0-1)", (0, 0.025, 0.05, 0.1, 0.2), _noise),
             Perturbation("blur", "Gaussian sigma in pixels", (0, 0.5, 1.0, 1.5, 2.0), _blur),
             Perturbation("brightness", "added to every pixel", (0, 0.05, 0.1, 0.2, 0.3), _brightness),
             Perturbation("contrast", "reduction of contrast", (0, 0.2, 0.4, 0.6, 0.8), _contrast),
             Perturbation("shift", "share of the width, right and down", (0, 1 / 32, 1 / 16, 1 / 8, 3 / 16), _shift)]
    if channels in (1, 3):
        found.insert(4, Perturbation("JPEG compression", "100 - JPEG quality", (0, 25, 50, 75, 90), _jpeg))
    return found


def table_perturbations(spread: np.ndarray) -> list[Perturbation]:
    return [Perturbation("Gaussian noise", "standard deviation, in each feature's standard deviations",
                         (0, 0.05, 0.1, 0.25, 0.5, 1.0), _feature_noise(spread))]


def robustness_curves(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, labels: np.ndarray,
                      perturbations: list[Perturbation], seed: int, advance: Callable = lambda: None) -> pd.DataFrame:
    """Accuracy at every level of every perturbation (each perturbation with its own seeded generator)."""
    rows = []
    for p, perturbation in enumerate(perturbations):
        rng = np.random.default_rng([seed, p])
        for level in perturbation.levels:
            perturbed = perturbation.apply(inputs, level, rng) if level else inputs
            accuracy = float(np.mean(predict(perturbed).argmax(1) == labels))
            rows.append({"perturbation": perturbation.name, "unit": perturbation.unit, "level": float(level),
                         "strength": float(level / perturbation.levels[-1]), "accuracy": accuracy,
                         "n_rows": len(labels)})
            advance()
    return pd.DataFrame(rows)


def breaking_strength(curve: pd.DataFrame, drop: float) -> float | None:
    """The relative strength at which accuracy first falls `drop` below the unperturbed accuracy (linear
    interpolation between levels); None when it never does."""
    strengths, accuracy = curve["strength"].to_numpy(), curve["accuracy"].to_numpy()
    floor = accuracy[0] - drop
    for i in range(1, len(accuracy)):
        if accuracy[i] < floor:
            fall = accuracy[i - 1] - accuracy[i]
            share = (accuracy[i - 1] - floor) / fall if fall > 0 else 0.0
            return float(strengths[i - 1] + share * (strengths[i] - strengths[i - 1]))
    return None


def missing_by_mean(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, labels: np.ndarray,
                    means: np.ndarray, feature_names: list[str]) -> pd.DataFrame:
    """Accuracy with each feature in turn replaced by its training mean."""
    baseline = float(np.mean(predict(inputs).argmax(1) == labels))
    rows = []
    for j, name in enumerate(feature_names):
        imputed = inputs.copy()
        imputed[:, j] = means[j]
        accuracy = float(np.mean(predict(imputed).argmax(1) == labels))
        rows.append({"feature": name, "accuracy": accuracy, "drop": baseline - accuracy})
    return pd.DataFrame(rows).sort_values("drop", ascending=False, kind="stable")


def measure_robustness(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Accuracy curves under the modality's perturbations; the check: none breaks the model early."""
    model = load_run_model(files["model"])
    train, val = read_split(files["train"]), read_split(files["validation"])
    rows = np.arange(len(val.labels))
    if len(rows) > MAX_ROWS[val.modality]:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS[val.modality], replace=False))
    inputs, labels = val.inputs[rows], val.labels[rows]
    is_table = val.modality == "table"
    spread = train.inputs.std(0) if is_table else None
    perturbations = table_perturbations(spread) if is_table else image_perturbations(inputs.shape[1])
    drop, needed = (threshold(files["card_record"], key) for key in ("robustness.accuracy_drop",
                                                                     "robustness.min_strength"))
    steps = sum(len(p.levels) for p in perturbations) + (len(val.feature_names) if is_table else 0)
    with progress_bar("robustness", total=steps) as advance:
        curves = robustness_curves(model.predict_proba, inputs, labels, perturbations, seed, advance)
        missing = (missing_by_mean(model.predict_proba, inputs, labels, train.inputs.mean(0), val.feature_names)
                   if is_table else None)
    breaks = {name: breaking_strength(curve, drop) for name, curve in curves.groupby("perturbation", sort=False)}
    early = {name: s for name, s in breaks.items() if s is not None and s < needed}
    weakest = min((s for s in breaks.values() if s is not None), default=1.0)
    stated = any(key.startswith("robustness.") for key in read_card_record(files["card_record"])
                 .get("thresholds_stated", []))
    check = Check("robustness.min_strength", "Robustness", f"relative strength that costs {drop:.0%} accuracy",
                  weakest, needed, "at least", SECTION_PERFORMANCE,
                  f"{len(early)} perturbation(s) break the model below relative strength {needed}"
                  + ("." if stated else " of the tool's built-in strengths (the model card states no operating "
                                        "conditions, so this weighs as a minor finding)."),
                  severity="" if stated else MINOR,  # built-in strengths, tied to no operating condition: minor
                  details=tuple(f"Robustness: {name} costs {drop:.0%} accuracy already at relative strength "
                                f"{s:.2f}." for name, s in early.items()))
    written = {"robustness": write_frame(layout.path(run_dir, "robustness"), curves)}
    if missing is not None:
        written["robustness_missing"] = write_frame(layout.path(run_dir, "robustness_missing"), missing)
    return {"files": written, "checks": [check.to_json()], "baseline": float(curves["accuracy"].iloc[0]),
            "breaks": breaks, "drop": drop, "needed": needed, "n_rows": len(rows), "conditions_stated": stated}


def robustness_section(data: ReportData, result: dict) -> dict:
    curves = pd.read_parquet(file_of(result, "robustness"))
    figure = validator_figures.robustness_curves(curves, result["drop"], data.figure("robustness.png"))
    perturbations = [{"name": name, "unit": curve["unit"].iloc[0], "levels": curve["level"].tolist(),
                      "accuracy": curve["accuracy"].tolist(), "breaks": result["breaks"][name]}
                     for name, curve in curves.groupby("perturbation", sort=False)]
    missing = None
    if "robustness_missing" in result["files"]:
        missing = pd.read_parquet(file_of(result, "robustness_missing")).head(TOP_TABLE_ROWS).to_dict("records")
    return {**{k: v for k, v in result.items() if k not in ("files", "checks")}, "figure": data.rel(figure),
            "perturbations": perturbations, "missing": missing}
