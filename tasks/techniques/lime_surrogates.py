"""LIME (the lime package): local surrogate explanations of the predicted class for the explained rows.

Tables: lime_tabular with quartile-discretised features, sampled around the row from the
training split's statistics. Images: lime_image on SLIC superpixels; a hidden superpixel is
set to 0 (black). Each superpixel's weight is spread evenly over its pixels (and channels),
so the map has the image's shape and sums to the sum of the weights.

File ``attributions/lime.parquet``, one row per explained row: position, source_id, class_index
(the predicted class), values (fixed_size_list<float32>[input size]), intercept, score (the
surrogate's R^2 on its samples), reasons (JSON list of [condition, weight], tables only).
"""

from __future__ import annotations

import json
import warnings
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.model.run_model import load_run_model
from tasks.report import figures
from tasks.report.narrative import row_labels
from tasks.report.sections import MAX_MAP_ROWS, ReportData, file_of, rows_at
from tasks.run import layout
from tasks.run.artifacts import write_parquet_atomic
from tasks.run.formats import Split, file_ref, read_kernel_shap, read_split
from tasks.run.progress import progress_bar
from tasks.techniques.groups import KERNEL_GRID, image_regions

N_SAMPLES = {"table": 2000, "image": 400}  # perturbed samples per explained row
SUPERPIXELS = 40  # SLIC segments asked for per 32x32 image
LIME_CONDITIONS = 4  # LIME conditions listed per row in the report


def lime_tabular(predict: Callable, train: Split, rows: np.ndarray, targets: np.ndarray, seed: int,
                 advance: Callable = lambda: None) -> list[dict]:
    """Per row: LIME weights (n_features,), intercept, score and the conditions in words."""
    from lime.lime_tabular import LimeTabularExplainer

    explainer = LimeTabularExplainer(train.inputs, feature_names=train.feature_names, class_names=train.class_names,
                                     discretize_continuous=True, random_state=seed, mode="classification")
    results = []
    for row, target in zip(rows, targets):
        exp = explainer.explain_instance(row, predict, labels=(int(target),), num_features=len(train.feature_names),
                                         num_samples=N_SAMPLES["table"])
        weights = np.zeros(len(train.feature_names))
        for feature, weight in exp.as_map()[int(target)]:
            weights[feature] = weight
        results.append({"values": weights, "intercept": float(exp.intercept[int(target)]), "score": float(exp.score),
                        "reasons": [[text, float(w)] for text, w in exp.as_list(label=int(target))]})
        advance()
    return results


def lime_images(predict: Callable, images: np.ndarray, targets: np.ndarray, seed: int,
                advance: Callable = lambda: None) -> list[dict]:
    """Per (C, H, W) image: LIME superpixel weights spread over their pixels, intercept and score."""
    from lime import lime_image
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    lime_image.tqdm = lambda iterable, **_: iterable  # lime draws a bar per image; the step shows its own

    channels = images.shape[1]
    segmenter = SegmentationAlgorithm("slic", n_segments=SUPERPIXELS, compactness=10, sigma=1, start_label=0)
    explainer = lime_image.LimeImageExplainer(random_state=seed)

    def classify(batch: np.ndarray) -> np.ndarray:  # (n, H, W, 3) -> (n, K)
        x = np.transpose(batch, (0, 3, 1, 2))
        return predict(x[:, :1] if channels == 1 else x)

    results = []
    for image, target in zip(images, targets):
        rgb = np.repeat(image, 3, axis=0) if channels == 1 else image
        exp = explainer.explain_instance(np.transpose(rgb, (1, 2, 0)).astype(np.float64), classify,
                                         labels=(int(target),), top_labels=None, hide_color=0,
                                         num_samples=N_SAMPLES["image"], segmentation_fn=segmenter,
                                         batch_size=200, random_seed=seed)
        pixel_map = np.zeros(exp.segments.shape)
        for segment, weight in exp.local_exp[int(target)]:
            inside = exp.segments == segment
            pixel_map[inside] = weight / inside.sum()
        results.append({"values": np.broadcast_to(pixel_map / channels, image.shape),
                        "intercept": float(exp.intercept[int(target)]), "score": float(exp.score), "reasons": []})
        advance()
    return results


def explain_lime(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """LIME for every row the SHAP stage chose, for its predicted class; write Parquet."""
    model = load_run_model(files["model"])
    train, val = read_split(files["train"]), read_split(files["validation"])
    explained = pq.read_table(files["explained"]).to_pandas()
    rows = val.rows_of(explained["source_id"])
    targets = explained["predicted"].to_numpy()

    def predict(x: np.ndarray) -> np.ndarray:
        return model.predict_proba(x)

    with warnings.catch_warnings(), progress_bar("LIME", total=len(rows)) as advance:
        warnings.simplefilter("ignore")
        if val.modality == "table":
            results = lime_tabular(predict, train, rows, targets, seed, advance)
        else:
            results = lime_images(predict, rows, targets, seed, advance)
    size = int(np.prod(rows.shape[1:]))
    values = np.stack([r["values"] for r in results]).astype(np.float32).reshape(-1)
    table = pa.table({
        "position": pa.array(explained["position"].to_numpy(), type=pa.int32()),
        "source_id": explained["source_id"].tolist(),
        "class_index": pa.array(targets, type=pa.int32()),
        "values": pa.FixedSizeListArray.from_arrays(pa.array(values), size),
        "intercept": pa.array([r["intercept"] for r in results], type=pa.float64()),
        "score": pa.array([r["score"] for r in results], type=pa.float64()),
        "reasons": [json.dumps(r["reasons"]) for r in results],
    })
    path = write_parquet_atomic(layout.path(run_dir, "lime"), table)
    return {"files": {"lime": file_ref(path)}, "checks": [],
            "mean_score": float(np.mean([r["score"] for r in results])), "n_samples": N_SAMPLES[val.modality]}


def lime_section(data: ReportData, result: dict) -> dict:
    """LIME weights of the predicted class: a heatmap and conditions (tables), or maps beside Kernel SHAP's (images)."""
    split, names = data.validation, data.names
    lime_rows = pq.read_table(file_of(result, "lime")).to_pandas()
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
    rows = rows_at(data.explained, shown)
    kernel_pred = kernel_values[np.arange(len(shown)), rows["predicted"].to_numpy()]
    patches = image_regions(tuple(shape), KERNEL_GRID)
    lime_by_position = dict(zip(lime_rows["position"], lime_values))
    maps = {
        "Kernel SHAP": patches.spread(kernel_pred).sum(1),  # a patch's value shared by its pixels
        "LIME": np.stack([lime_by_position[p] for p in shown]).sum(1),
    }
    short = figures.short_labels(names, 12)
    titles = [f"{sid[-20:]}\npred {short[k]}" for sid, k in zip(rows["source_id"], rows["predicted"])]
    section["maps_figure"] = data.rel(figures.method_maps(split.rows_of(rows["source_id"]), maps, titles,
                                                          data.figure("kernel_lime.png")))
    return section
