"""Partial dependence (PDP) and ICE curves of the most important table features (scikit-learn's inspection).

File ``analysis/partial_dependence.parquet``, one row per point: feature, class_index, row (-1 for the
average, the PDP; else the validation row of an ICE curve), grid_value, probability. The PDP is
the model's average predicted probability as one feature is swept over a grid (the 5th to 95th
percentile of the validation values) with every row's other features kept.
For two classes only the second (the "positive" class) is stored, as scikit-learn reports it.
"""

from __future__ import annotations


from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.inspection import partial_dependence

from tasks.model.run_model import load_run_model
from tasks.report import figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.formats import read_split, write_frame

TOP_FEATURES = 4  # features with the largest permutation importance get a PDP
GRID_POINTS = 20


class FittedClassifier(ClassifierMixin, BaseEstimator):
    """A model's probability function seen as a fitted scikit-learn classifier (predict_proba only)."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray] | None = None, n_classes: int = 2):
        self.predict_fn = predict
        self.n_classes = n_classes

    def get_params(self, deep: bool = True) -> dict:
        return {"predict": self.predict_fn, "n_classes": self.n_classes}

    def fit(self, X, y=None):  # already trained; present because scikit-learn's API expects it
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True

    @property
    def classes_(self) -> np.ndarray:
        return np.arange(self.n_classes)

    def predict_proba(self, X) -> np.ndarray:
        return self.predict_fn(np.asarray(X, dtype=np.float32))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)


def pd_curves(predict: Callable[[np.ndarray], np.ndarray], n_classes: int, inputs: np.ndarray,
              feature: int) -> pd.DataFrame:
    """PDP and ICE rows (see the module docstring) for one feature column of a probability function."""
    result = partial_dependence(FittedClassifier(predict, n_classes), inputs, [feature], kind="both",
                                grid_resolution=GRID_POINTS, response_method="predict_proba", method="brute")
    grid = result["grid_values"][0]
    classes = [1] if n_classes == 2 else list(range(n_classes))
    frames = []
    for out, k in enumerate(classes):
        frames.append(pd.DataFrame({"class_index": k, "row": -1, "grid_value": grid,
                                    "probability": result["average"][out]}))
        ice = result["individual"][out]  # (n_rows, grid)
        frames.append(pd.DataFrame({"class_index": k, "row": np.repeat(np.arange(len(ice)), len(grid)),
                                    "grid_value": np.tile(grid, len(ice)), "probability": ice.reshape(-1)}))
    return pd.concat(frames, ignore_index=True)


def compute_partial_dependence(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """PDP + ICE for the TOP_FEATURES most important features (permutation importance) of a table model."""
    model = load_run_model(files["model"])
    val = read_split(files["validation"])
    importance = pd.read_parquet(files["permutation_importance"])
    top = importance.sort_values("importance_mean", ascending=False)["name"].head(TOP_FEATURES).tolist()
    frames = []
    for name in top:
        curves = pd_curves(model.predict_proba, len(val.class_names), val.inputs, val.feature_names.index(name))
        curves.insert(0, "feature", name)
        frames.append(curves)
    table = pd.concat(frames, ignore_index=True)
    return {"files": {"partial_dependence": write_frame(layout.path(run_dir, "partial_dependence"), table)},
            "checks": [], "features": top}


def partial_dependence_section(data: ReportData, result: dict) -> dict:
    curves = pd.read_parquet(file_of(result, "partial_dependence"))
    figure = figures.pdp_ice(curves, data.names, data.figure("partial_dependence.png"))
    averages = curves[curves["row"] < 0]
    ranges = [{"feature": f, "low": float(g["probability"].min()), "high": float(g["probability"].max())}
              for f, g in averages.groupby("feature", sort=False)]
    return {"figure": data.rel(figure), "features": result["features"], "ranges": ranges,
            "n_rows": int(curves["row"].max()) + 1}
