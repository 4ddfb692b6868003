"""The report's sections: each turns a step's files and result into figures and the small context its
template partial (templates/sections/) shows. Every function takes the report's `ReportData` and the
step's result; the technique registry (tasks/techniques/registry.py) names which one shows what.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from torch import nn

from tasks.report import figures
from tasks.report.narrative import reason_codes, row_labels
from tasks.run import layout
from tasks.run.formats import Split, read_kernel_shap
from tasks.techniques.agreement import THRESHOLD as AGREEMENT_THRESHOLD
from tasks.techniques.agreement import flagged_rows
from tasks.techniques.groups import KERNEL_GRID, image_regions
from tasks.techniques.slices import GAP, MIN_ROWS

MAX_MAP_ROWS = 8  # images shown in the gradient, Kernel SHAP and LIME figures
TOP_TABLE_ROWS = 10  # rows of importance tables
LIME_CONDITIONS = 4  # LIME conditions listed per row


@dataclass
class ReportData:
    """What every section may draw on: the run's splits, the SHAP stage's rows and values, the model."""

    run_dir: Path
    train: Split
    validation: Split
    explained: pd.DataFrame  # the SHAP stage's explained rows (deepshap/explained.parquet)
    values: np.ndarray  # their DeepSHAP values, (n, K, *input_shape)
    model: nn.Module

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


def _file(result: dict, key: str) -> str:
    return result["files"][key]["path"]


def _rows(frame: pd.DataFrame, positions: list[int]) -> pd.DataFrame:
    return frame.set_index("position").loc[positions].reset_index()


def weights_section(data: ReportData, result: dict) -> dict:
    """Every parameter tensor's statistics, weight histograms, and (CNN) the first layer's filters."""
    table = pd.read_parquet(_file(result, "weight_statistics"))
    histograms = figures.weight_histograms(data.model, data.figure("weight_histograms.png"))
    filters = (figures.first_conv_filters(data.model, data.figure("first_conv_filters.png"))
               if data.modality == "image" else None)
    return {"table": table.to_dict("records"), "near_zero": result["near_zero"], "histograms": data.rel(histograms),
            "filters": data.rel(filters) if filters else None}


def permutation_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(_file(result, "permutation_importance"))
    parts = []
    for kind, title in (("feature", "per feature"), ("region", "per image region (4x4 grid)"),
                        ("channel", "per colour channel")):
        rows = table[table["kind"] == kind]
        if len(rows):
            figure = figures.importance_bars(rows, data.figure(f"permutation_{kind}.png"),
                                             f"permutation importance {title}")
            parts.append({"kind": kind, "title": title, "figure": data.rel(figure),
                          "top": rows.sort_values("importance_mean", ascending=False).head(TOP_TABLE_ROWS)
                                     .to_dict("records")})
    return {"parts": parts, "baseline": result["baseline"], "n_repeats": result["n_repeats"],
            "n_rows": result["n_rows"], "metric": table["metric"].iloc[0]}


def global_shap_section(data: ReportData, result: dict | None = None) -> dict:
    """Mean |SHAP| over the explained rows, per class: bars per feature (tables) or maps per pixel (images)."""
    values, split = data.values, data.validation
    mean_abs = np.abs(values).mean(0)  # (K, *shape)
    path = data.figure("global_shap.png")
    if split.modality == "table":
        figure = figures.global_importance_bars(mean_abs, split.feature_names, split.class_names, path)
        total = mean_abs.sum(0)
        top = [{"name": split.feature_names[i], "value": float(total[i])} for i in np.argsort(-total)[:TOP_TABLE_ROWS]]
    else:
        figure = figures.global_importance_maps(mean_abs.sum(1), split.class_names, path)
        top = []
    return {"figure": data.rel(figure), "top": top, "n": len(values)}


def partial_dependence_section(data: ReportData, result: dict) -> dict:
    curves = pd.read_parquet(_file(result, "partial_dependence"))
    figure = figures.pdp_ice(curves, data.names, data.figure("partial_dependence.png"))
    averages = curves[curves["row"] < 0]
    ranges = [{"feature": f, "low": float(g["probability"].min()), "high": float(g["probability"].max())}
              for f, g in averages.groupby("feature", sort=False)]
    return {"figure": data.rel(figure), "features": result["features"], "ranges": ranges,
            "n_rows": int(curves["row"].max()) + 1}


def gradient_section(data: ReportData, result: dict) -> dict:
    """Saliency and IG maps (images) or an IG heatmap (tables), and IG's completeness."""
    split, names = data.validation, data.names
    table = pq.read_table(_file(result, "gradients")).to_pandas()
    shape = split.inputs.shape[1:]
    shown = table.head(MAX_MAP_ROWS)
    ig = np.stack(table["integrated_gradients"].to_numpy()).reshape(-1, *shape)
    labels = row_labels(table.rename(columns={"class_index": "predicted"}), names)
    if split.modality == "table":
        figure = figures.attribution_heatmap(ig, labels, split.feature_names, data.figure("gradients.png"),
                                             "Integrated Gradients of the predicted class")
    else:
        figure = figures.gradient_grid(
            split.rows_of(shown["source_id"]),
            np.stack(shown["saliency"].to_numpy()).reshape(-1, *shape), ig[: len(shown)],
            [f"{sid[:22]}\nclass {names[k][:12]}" for sid, k in zip(shown["source_id"], shown["class_index"])],
            data.figure("gradients.png"))
    return {"figure": data.rel(figure), "max": result["max_ig_completeness_error"],
            "mean": result["mean_ig_completeness_error"], "n": len(table),
            "shown": len(shown) if split.modality == "image" else len(table), "steps": result["steps"]}


def kernel_shap_section(data: ReportData, result: dict) -> dict:
    """Kernel SHAP of the predicted class: a heatmap of rows x features (tables; images: with LIME's section)."""
    frame, kernel_values, players = read_kernel_shap(_file(result, "kernel_shap"))
    positions = list(dict.fromkeys(frame["position"]))
    rows = _rows(data.explained, positions)
    section = {"n": len(positions), "samples": result["n_samples"], "max_additivity": result["max_additivity_error"],
               "figure": None}
    if data.modality == "table":
        kernel_pred = kernel_values[np.arange(len(positions)), rows["predicted"].to_numpy()]  # (n, players)
        section["figure"] = data.rel(figures.attribution_heatmap(
            kernel_pred, row_labels(rows, data.names), players, data.figure("kernel_shap.png"),
            "Kernel SHAP of the predicted class"))
    return section


def lime_section(data: ReportData, result: dict) -> dict:
    """LIME weights of the predicted class: a heatmap and conditions (tables), or maps beside Kernel SHAP's (images)."""
    split, names = data.validation, data.names
    lime_rows = pq.read_table(_file(result, "lime")).to_pandas()
    shape = split.inputs.shape[1:]
    lime_values = np.stack(lime_rows["values"].to_numpy()).reshape(-1, *shape)
    section = {"n": len(lime_rows), "samples": result["n_samples"], "mean_score": result["mean_score"],
               "figure": None, "maps_figure": None, "reasons": []}
    if data.modality == "table":
        section["figure"] = data.rel(figures.attribution_heatmap(
            lime_values, row_labels(lime_rows.assign(predicted=lime_rows["class_index"]), names), split.feature_names,
            data.figure("lime.png"), "LIME weights of the predicted class"))
        section["reasons"] = [{"source_id": sid, "reasons": json.loads(reasons)[:LIME_CONDITIONS]}
                              for sid, reasons in zip(lime_rows["source_id"], lime_rows["reasons"])][:MAX_MAP_ROWS]
        return section
    kernel_path = layout.path(data.run_dir, "kernel_shap")
    if not kernel_path.is_file():
        return section
    frame, kernel_values, _ = read_kernel_shap(kernel_path)
    shown = list(dict.fromkeys(frame["position"]))[:MAX_MAP_ROWS]
    rows = _rows(data.explained, shown)
    kernel_pred = kernel_values[np.arange(len(shown)), rows["predicted"].to_numpy()]
    patches = image_regions(tuple(shape), KERNEL_GRID)
    lime_by_position = dict(zip(lime_rows["position"], lime_values))
    maps = {
        "Kernel SHAP": patches.spread(kernel_pred).sum(1),  # a patch's value shared by its pixels
        "LIME": np.stack([lime_by_position[p] for p in shown]).sum(1),
    }
    titles = [f"{sid[-20:]}\npred {names[k][:12]}" for sid, k in zip(rows["source_id"], rows["predicted"])]
    section["maps_figure"] = data.rel(figures.method_maps(split.rows_of(rows["source_id"]), maps, titles,
                                                          data.figure("kernel_lime.png")))
    return section


def slices_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(_file(result, "slices"))
    figure = figures.slice_bars(table, result["overall_accuracy"], data.figure("slices.png"))
    return {"figure": data.rel(figure), "rows": table.to_dict("records"), "overall": result["overall_accuracy"],
            "flagged": table[table["flagged"]].to_dict("records"), "gap": GAP, "min_rows": MIN_ROWS}


def agreement_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(_file(result, "agreement"))
    methods = list(dict.fromkeys(list(table["method_a"]) + list(table["method_b"])))
    matrix = pd.DataFrame(np.eye(len(methods)), index=methods, columns=methods)
    pairs = table.groupby(["method_a", "method_b"], sort=False).agg(
        spearman=("spearman", "mean"), top_overlap=("top_overlap", "mean"), flagged=("flagged", "sum"),
        rows=("position", "nunique")).reset_index()
    for pair in pairs.itertuples():
        matrix.loc[pair.method_a, pair.method_b] = matrix.loc[pair.method_b, pair.method_a] = pair.spearman
    figure = figures.agreement_matrix(matrix, data.figure("agreement.png"))
    flagged = table[table["flagged"]]
    return {"figure": data.rel(figure), "pairs": pairs.to_dict("records"), "threshold": AGREEMENT_THRESHOLD,
            "n_rows": int(table["position"].nunique()), "n_flagged_rows": len(flagged_rows(table)),
            "flagged": flagged.sort_values("spearman").head(TOP_TABLE_ROWS).to_dict("records")}


def faithfulness_section(data: ReportData, result: dict) -> dict:
    """Randomisation curve, deletion/insertion curves and their areas, stability figures."""
    randomisation = pd.read_parquet(_file(result, "randomisation"))
    section = {**{k: v for k, v in result.items() if k not in ("files", "checks")},
               "randomisation_figure": data.rel(figures.randomisation_curve(
                   randomisation, result["randomisation_threshold"], data.figure("randomisation.png"))),
               "deletion_figure": None}
    if "deletion_insertion" in result["files"]:
        curves = pd.read_parquet(_file(result, "deletion_insertion"))
        section["deletion_figure"] = data.rel(figures.deletion_insertion_curves(curves,
                                                                                 data.figure("deletion_insertion.png")))
    return section


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
