"""The report's technique sections: each turns a step's Parquet files into figures and a small context."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks import figures
from tasks.agreement import THRESHOLD as AGREEMENT_THRESHOLD
from tasks.agreement import flagged_rows
from tasks.feature_groups import KERNEL_GRID, image_regions
from tasks.gradients import IG_STEPS
from tasks.kernel_shap import read_kernel_shap
from tasks.load import Split
from tasks.slices import GAP, MIN_ROWS

MAX_MAP_ROWS = 8  # images shown in the gradient, Kernel SHAP and LIME figures
TOP_TABLE_ROWS = 10  # rows of importance tables
LIME_CONDITIONS = 4  # LIME conditions listed per row


def _rel(path: Path, run_dir: Path) -> str:
    return path.relative_to(run_dir).as_posix()


def _rows(frame: pd.DataFrame, positions: list[int]) -> pd.DataFrame:
    return frame.set_index("position").loc[positions].reset_index()


def row_labels(explained: pd.DataFrame, names: list[str]) -> list[str]:
    return [f"{sid[-22:]} ({names[k][:12]})" for sid, k in zip(explained["source_id"], explained["predicted"])]


def reason_codes(values: np.ndarray, row: np.ndarray, feature_names: list[str], count: int = 3) -> list[str]:
    """The `count` features that pushed a decision most towards its class, in words."""
    order = [i for i in np.argsort(-values) if values[i] > 0][:count]
    return [f"{feature_names[i]} = {row[i]:.4g} (SHAP {values[i]:+.3f})" for i in order]


def permutation_section(run_dir: Path, analysis: dict) -> dict:
    table = pd.read_parquet(analysis["permutation_importance"]["path"])
    fig_dir = run_dir / "figures"
    parts = []
    for kind, title in (("feature", "per feature"), ("region", "per image region (4x4 grid)"),
                        ("channel", "per colour channel")):
        rows = table[table["kind"] == kind]
        if len(rows):
            figure = figures.importance_bars(rows, fig_dir / f"permutation_{kind}.png",
                                             f"permutation importance {title}")
            parts.append({"kind": kind, "title": title, "figure": _rel(figure, run_dir),
                          "top": rows.sort_values("importance_mean", ascending=False).head(TOP_TABLE_ROWS)
                                     .to_dict("records")})
    return {"parts": parts, "baseline": analysis["baseline"], "n_repeats": analysis["n_repeats"],
            "n_rows": analysis["n_rows"], "metric": table["metric"].iloc[0]}


def global_shap_section(run_dir: Path, values: np.ndarray, split: Split) -> dict:
    """Mean |SHAP| over the explained rows, per class: bars per feature (tables) or maps per pixel (images)."""
    mean_abs = np.abs(values).mean(0)  # (K, *shape)
    path = run_dir / "figures" / "global_shap.png"
    if split.modality == "table":
        figure = figures.global_importance_bars(mean_abs, split.feature_names, split.class_names, path)
        total = mean_abs.sum(0)
        top = [{"name": split.feature_names[i], "value": float(total[i])} for i in np.argsort(-total)[:TOP_TABLE_ROWS]]
    else:
        figure = figures.global_importance_maps(mean_abs.sum(1), split.class_names, path)
        top = []
    return {"figure": _rel(figure, run_dir), "top": top, "n": len(values)}


def partial_dependence_section(run_dir: Path, analysis: dict | None, names: list[str]) -> dict | None:
    if not analysis:
        return None
    curves = pd.read_parquet(analysis["partial_dependence"]["path"])
    figure = figures.pdp_ice(curves, names, run_dir / "figures" / "partial_dependence.png")
    averages = curves[curves["row"] < 0]
    ranges = [{"feature": f, "low": float(g["probability"].min()), "high": float(g["probability"].max())}
              for f, g in averages.groupby("feature", sort=False)]
    return {"figure": _rel(figure, run_dir), "features": analysis["features"], "ranges": ranges,
            "n_rows": int(curves["row"].max()) + 1}


def gradient_section(run_dir: Path, analysis: dict, split: Split, names: list[str]) -> dict:
    """Saliency and IG maps (images) or an IG heatmap (tables), and IG's completeness."""
    table = pq.read_table(analysis["gradients"]["path"]).to_pandas()
    shape = split.inputs.shape[1:]
    shown = table.head(MAX_MAP_ROWS)
    ig = np.stack(table["integrated_gradients"].to_numpy()).reshape(-1, *shape)
    labels = row_labels(table.rename(columns={"class_index": "predicted"}), names)
    if split.modality == "table":
        figure = figures.attribution_heatmap(ig, labels, split.feature_names, run_dir / "figures" / "gradients.png",
                                             "Integrated Gradients of the predicted class")
    else:
        index = {sid: i for i, sid in enumerate(split.source_ids)}
        figure = figures.gradient_grid(
            split.inputs[[index[s] for s in shown["source_id"]]],
            np.stack(shown["saliency"].to_numpy()).reshape(-1, *shape), ig[: len(shown)],
            [f"{sid[:22]}\nclass {names[k][:12]}" for sid, k in zip(shown["source_id"], shown["class_index"])],
            run_dir / "figures" / "gradients.png")
    errors = table["ig_completeness_error"].to_numpy()
    return {"figure": _rel(figure, run_dir), "max": float(errors.max()), "mean": float(errors.mean()),
            "n": len(table), "shown": len(shown) if split.modality == "image" else len(table), "steps": IG_STEPS}


def local_methods_section(run_dir: Path, kernel: dict, lime: dict, split: Split, explained: pd.DataFrame,
                          names: list[str]) -> dict:
    """Kernel SHAP and LIME of the predicted class: heatmaps (tables) or maps beside DeepSHAP (images)."""
    frame, kernel_values, players = read_kernel_shap(Path(kernel["kernel_shap"]["path"]))
    positions = list(dict.fromkeys(frame["position"]))
    rows = _rows(explained, positions)
    predicted = rows["predicted"].to_numpy()
    kernel_pred = kernel_values[np.arange(len(positions)), predicted]  # (n, players)
    lime_rows = pq.read_table(lime["lime"]["path"]).to_pandas()
    shape = split.inputs.shape[1:]
    lime_values = np.stack(lime_rows["values"].to_numpy()).reshape(-1, *shape)
    fig_dir = run_dir / "figures"
    result = {"kernel_n": len(positions), "kernel_samples": kernel["n_samples"],
              "kernel_max_additivity": kernel["max_additivity_error"], "lime_n": len(lime_rows),
              "lime_samples": lime["n_samples"], "lime_mean_score": lime["mean_score"],
              "kernel_figure": None, "lime_figure": None, "maps_figure": None, "reasons": []}
    if split.modality == "table":
        result["kernel_figure"] = _rel(figures.attribution_heatmap(
            kernel_pred, row_labels(rows, names), players, fig_dir / "kernel_shap.png",
            "Kernel SHAP of the predicted class"), run_dir)
        result["lime_figure"] = _rel(figures.attribution_heatmap(
            lime_values, row_labels(lime_rows.assign(predicted=lime_rows["class_index"]), names), split.feature_names,
            fig_dir / "lime.png", "LIME weights of the predicted class"), run_dir)
        result["reasons"] = [{"source_id": sid, "reasons": json.loads(reasons)[:LIME_CONDITIONS]}
                             for sid, reasons in zip(lime_rows["source_id"], lime_rows["reasons"])][:MAX_MAP_ROWS]
        return result
    patches = image_regions(tuple(shape), KERNEL_GRID)
    shown = positions[:MAX_MAP_ROWS]
    index = {sid: i for i, sid in enumerate(split.source_ids)}
    images = split.inputs[[index[s] for s in rows["source_id"][: len(shown)]]]
    lime_by_position = dict(zip(lime_rows["position"], lime_values))
    maps = {
        "Kernel SHAP": patches.spread(kernel_pred[: len(shown)]).sum(1),  # a patch's value shared by its pixels
        "LIME": np.stack([lime_by_position[p] for p in shown]).sum(1),
    }
    titles = [f"{sid[-20:]}\npred {names[k][:12]}" for sid, k in zip(rows["source_id"], predicted)]
    result["maps_figure"] = _rel(figures.method_maps(images, maps, titles, fig_dir / "kernel_lime.png"), run_dir)
    return result


def slices_section(run_dir: Path, analysis: dict) -> dict:
    table = pd.read_parquet(analysis["slices"]["path"])
    figure = figures.slice_bars(table, analysis["overall_accuracy"], run_dir / "figures" / "slices.png")
    return {"figure": _rel(figure, run_dir), "rows": table.to_dict("records"), "overall": analysis["overall_accuracy"],
            "flagged": table[table["flagged"]].to_dict("records"), "gap": GAP, "min_rows": MIN_ROWS}


def agreement_section(run_dir: Path, analysis: dict) -> dict:
    table = pd.read_parquet(analysis["agreement"]["path"])
    methods = list(dict.fromkeys(list(table["method_a"]) + list(table["method_b"])))
    matrix = pd.DataFrame(np.eye(len(methods)), index=methods, columns=methods)
    pairs = table.groupby(["method_a", "method_b"], sort=False).agg(
        spearman=("spearman", "mean"), top_overlap=("top_overlap", "mean"), flagged=("flagged", "sum"),
        rows=("position", "nunique")).reset_index()
    for pair in pairs.itertuples():
        matrix.loc[pair.method_a, pair.method_b] = matrix.loc[pair.method_b, pair.method_a] = pair.spearman
    figure = figures.agreement_matrix(matrix, run_dir / "figures" / "agreement.png")
    flagged = table[table["flagged"]]
    return {"figure": _rel(figure, run_dir), "pairs": pairs.to_dict("records"), "threshold": AGREEMENT_THRESHOLD,
            "n_rows": int(table["position"].nunique()), "n_flagged_rows": len(flagged_rows(table)),
            "flagged": flagged.sort_values("spearman").head(TOP_TABLE_ROWS).to_dict("records")}


def faithfulness_section(run_dir: Path, analysis: dict | None) -> dict | None:
    """Randomisation curve, deletion/insertion curves and their areas, stability figures."""
    if not analysis:
        return None
    fig_dir = run_dir / "figures"
    randomisation = pd.read_parquet(analysis["randomisation"]["path"])
    result = {**{k: v for k, v in analysis.items() if not isinstance(v, dict) or k == "areas"},
              "randomisation_figure": _rel(figures.randomisation_curve(
                  randomisation, analysis["randomisation_threshold"], fig_dir / "randomisation.png"), run_dir),
              "deletion_figure": None}
    if "deletion_insertion" in analysis:
        curves = pd.read_parquet(analysis["deletion_insertion"]["path"])
        result["deletion_figure"] = _rel(figures.deletion_insertion_curves(curves, fig_dir / "deletion_insertion.png"),
                                         run_dir)
        areas = analysis["areas"]
        result["deletion_ok"] = areas["deletion"]["attribution"] < areas["deletion"]["random"]
        result["insertion_ok"] = areas["insertion"]["attribution"] > areas["insertion"]["random"]
    return result


def comparison_section(analysis: dict | None) -> dict | None:
    """The comparison with the previous run, as tables for the template (None: nothing to compare with)."""
    if not analysis or not analysis.get("previous"):
        return None
    files = analysis["files"]
    metrics = pd.read_parquet(files["metrics"])
    importance = pd.read_parquet(files["importance"])
    shift = pd.read_parquet(files["data_shift"]).sort_values("ks", ascending=False)
    changed = pd.read_parquet(files["predictions"])
    return {**{k: v for k, v in analysis.items() if k != "files"}, "metrics": metrics.to_dict("records"),
            "importance": importance.to_dict("records"), "shift": shift.head(TOP_TABLE_ROWS).to_dict("records"),
            "changed": changed.head(TOP_TABLE_ROWS).to_dict("records")}


def limitations(model_card: dict | None, slices: dict | None, agreement: dict | None, faithfulness: dict | None,
                quality: dict, comparison: dict | None) -> list[str]:
    """What a validator should know the report found wanting, in words (the model card's own come first)."""
    found = []
    for field in (model_card or {}).get("fields", []):
        if field["key"] == "limitations" and not field["missing"]:
            value = field["value"]
            found += [f"Stated by the model owner: {v}" for v in (value if isinstance(value, list) else [value])]
    if quality["over"]:
        found.append(f"{quality['over']} explanations exceed the DeepSHAP additivity threshold "
                     f"{quality['threshold']:g}.")
    for row in (slices or {}).get("flagged", []):
        found.append(f"Weak slice: {row['slicing']} {row['slice']} has accuracy {row['accuracy']:.3f} "
                     f"on {row['n_rows']} rows (overall {slices['overall']:.3f}).")
    if agreement and agreement["n_flagged_rows"]:
        found.append(f"Explanation methods disagree (median pairwise Spearman below {agreement['threshold']}) on "
                     f"{agreement['n_flagged_rows']} of {agreement['n_rows']} explained rows.")
    if faithfulness:
        if faithfulness["randomisation_flagged"]:
            found.append("The DeepSHAP maps barely change when the model's weights are randomised: they may not "
                         "reflect what the model learned.")
        if faithfulness["stability_flagged"]:
            found.append(f"Explanations move with the background sample (mean Spearman "
                         f"{faithfulness['stability_mean']:.2f} between two samples).")
        if faithfulness.get("deletion_ok") is False or faithfulness.get("insertion_ok") is False:
            found.append("Removing or adding pixels in attribution order is no better than a random order.")
    if comparison and comparison["n_shifted"]:
        found.append(f"The input data shifted since the previous run in {comparison['n_shifted']} "
                     f"feature(s) or channel(s) (Kolmogorov-Smirnov statistic above the threshold).")
    return found
