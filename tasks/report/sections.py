"""What the report's sections draw on (`ReportData`), and the sections that belong to no technique step.

A technique's own section function lives beside its step, in its module in tasks/techniques/: it takes
`ReportData` and the step's result and returns what its template partial (templates/sections/) shows.
The technique registry (tasks/techniques/registry.py) names which function and partial show what.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.model.run_model import RunModel
from tasks.report import figures
from tasks.run import layout
from tasks.run.formats import Split

MAX_MAP_ROWS = 8  # images shown in the gradient, Kernel SHAP and LIME figures
TOP_TABLE_ROWS = 10  # rows of importance tables


@dataclass
class ReportData:
    """What every section may draw on: the run's splits, the SHAP stage's rows and values, the model."""

    run_dir: Path
    train: Split
    validation: Split
    explained: pd.DataFrame  # the SHAP stage's explained rows (deepshap/explained.parquet)
    values: np.ndarray  # their DeepSHAP values, (n, K, *input_shape)
    model: RunModel  # the run's model (tasks/model/run_model.py)
    positive: int | None = None  # binary models: the class explanations speak for (tasks/techniques/positive.py)

    @property
    def names(self) -> list[str]:
        return self.train.class_names

    @property
    def modality(self) -> str:
        return self.train.modality

    def figure(self, name: str) -> Path:
        """Where a figure of the report goes."""
        return layout.folder(self.run_dir, "figures") / name

    def rel(self, path: Path) -> str:
        """A run file's path as the report links it."""
        return Path(path).relative_to(self.run_dir).as_posix()


def file_of(result: dict, key: str) -> str:
    """The path of the file `key` a step's result lists."""
    return result["files"][key]["path"]


def rows_at(frame: pd.DataFrame, positions: list[int]) -> pd.DataFrame:
    """The rows of `frame` at these explained-row positions, in their order."""
    return frame.set_index("position").loc[positions].reset_index()


def global_shap_section(data: ReportData, result: dict | None = None) -> dict:
    """Mean |SHAP| over the explained rows, per class: bars per feature (tables) or maps per pixel (images)."""
    values, split = data.values, data.validation
    mean_abs = np.abs(values).mean(0)  # (K, *shape)
    classes = list(split.class_names)
    if data.positive is not None:  # the other class's values are the negatives of these
        mean_abs, classes = mean_abs[[data.positive]], [classes[data.positive]]
    path = data.figure("global_shap.png")
    if split.modality == "table":
        figure = figures.global_importance_bars(mean_abs, split.feature_names, classes, path)
        total = mean_abs.sum(0)
        top = [{"name": split.feature_names[i], "value": float(total[i])} for i in np.argsort(-total)[:TOP_TABLE_ROWS]]
    else:
        figure = figures.global_importance_maps(mean_abs.sum(1), classes, path)
        top = []
    return {"figure": data.rel(figure), "top": top, "n": len(values),
            "positive": classes[0] if data.positive is not None else None}


def comparison_section(analysis: dict | None) -> dict | None:
    """The comparison with the previous run, as tables for the template (None: nothing to compare with)."""
    if not analysis or not analysis.get("previous"):
        return None
    files = {name: ref["path"] for name, ref in analysis["files"].items()}
    metrics = pd.read_parquet(files["metrics"])
    importance = pd.read_parquet(files["importance"])
    shift = pd.read_parquet(files["data_shift"]).sort_values("ks", ascending=False)
    changed = pd.read_parquet(files["predictions"])
    return {**{k: v for k, v in analysis.items() if k not in ("files", "checks")}, "metrics": metrics.to_dict("records"),
            "importance": importance.to_dict("records"), "shift": shift.head(TOP_TABLE_ROWS).to_dict("records"),
            "changed": changed.head(TOP_TABLE_ROWS).to_dict("records")}
