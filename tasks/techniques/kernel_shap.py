"""Model-agnostic SHAP: Kernel SHAP (shap.KernelExplainer) on any predict function.

Tables: the features are the players; absent features take the values of background rows
(a seeded sample of the run's SHAP background), shap's standard Kernel SHAP. Images: the
players are the KERNEL_GRID x KERNEL_GRID patches; an absent patch takes the mean background
image's pixels. Either way the values add up, by construction, to f(x) - f(reference).

File ``attributions/kernel_shap.parquet``, one row per (explained row, class): position, source_id,
class_index, values (fixed_size_list<float32>[n_players]), expected (f at the reference),
additivity_error. Metadata ``accountability.players`` (JSON list of player names).
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
from tasks.report.sections import ReportData, file_of, rows_at
from tasks.run import layout
from tasks.run.artifacts import write_parquet_atomic
from tasks.run.checks import SECTION_QUALITY, Check
from tasks.run.formats import (META_ENGINE, META_PLAYERS, background_images, file_ref, metadata, read_kernel_shap,
                                read_split)
from tasks.run.progress import progress_bar
from tasks.techniques.groups import KERNEL_GRID, FeatureGroups, feature_columns, image_regions

N_SAMPLES = {"table": 1024, "image": 1024}  # coalitions evaluated per explained row
MAX_ROWS = {"table": 64, "image": 8}  # explained rows given Kernel SHAP (the first of the SHAP stage's)
TABLE_BACKGROUND = 50  # background rows Kernel SHAP averages over, for tables
ADDITIVITY_THRESHOLD = 1e-4  # on probabilities, as DeepSHAP's


def kernel_shap_tabular(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, background: np.ndarray,
                        seed: int, advance: Callable = lambda: None) -> tuple[np.ndarray, np.ndarray]:
    """Kernel SHAP values (n, K, n_features) and the expected output (K,) for table rows."""
    import shap

    explainer = shap.KernelExplainer(predict, background)
    values = []
    for row in rows:
        np.random.seed(seed % 2**32)  # shap samples coalitions from numpy's global generator
        values.append(np.asarray(explainer.shap_values(row[None], nsamples=N_SAMPLES["table"], l1_reg=False,
                                                       silent=True))[0].T)  # (F, K) -> (K, F)
        advance()
    return np.stack(values), np.asarray(explainer.expected_value, dtype=np.float64)


def kernel_shap_patches(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, reference: np.ndarray,
                        groups: FeatureGroups, seed: int,
                        advance: Callable = lambda: None) -> tuple[np.ndarray, np.ndarray]:
    """Kernel SHAP values (n, K, n_patches) of images whose absent patches take `reference`'s pixels."""
    import shap

    masks = groups.masks.astype(np.float32)  # (G, C*H*W)
    values, expected = [], None
    for image in images:
        def masked(z: np.ndarray, image=image) -> np.ndarray:  # z: (m, G) in {0, 1}
            keep = np.clip(z.astype(np.float32) @ masks, 0, 1).reshape(-1, *image.shape)
            return predict(keep * image + (1 - keep) * reference)

        explainer = shap.KernelExplainer(masked, np.zeros((1, len(groups.names))))
        np.random.seed(seed % 2**32)
        phi = explainer.shap_values(np.ones((1, len(groups.names))), nsamples=N_SAMPLES["image"], l1_reg=False,
                                    silent=True)
        values.append(np.asarray(phi)[0].T)
        advance()
        expected = np.asarray(explainer.expected_value, dtype=np.float64)
    return np.stack(values), expected


def explain_kernel_shap(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Kernel SHAP for the first MAX_ROWS rows the SHAP stage chose; write Parquet; check additivity."""
    model = load_run_model(files["model"])
    val = read_split(files["validation"])
    explained = pq.read_table(files["explained"]).to_pandas().head(MAX_ROWS[val.modality])
    rows = val.rows_of(explained["source_id"])
    background = background_images(files["background"])

    def predict(x: np.ndarray) -> np.ndarray:
        return model.predict_proba(x)

    with warnings.catch_warnings(), progress_bar("Kernel SHAP", total=len(rows)) as advance:
        warnings.simplefilter("ignore")  # shap warns about background sizes it does not summarise
        if val.modality == "table":
            groups = feature_columns(val.feature_names)
            sample = np.random.default_rng(seed).choice(len(background), min(TABLE_BACKGROUND, len(background)),
                                                        replace=False)
            values, expected = kernel_shap_tabular(predict, rows, background[np.sort(sample)], seed, advance)
        else:
            groups = image_regions(tuple(val.inputs.shape[1:]), KERNEL_GRID)
            values, expected = kernel_shap_patches(predict, rows, background.mean(0), groups, seed, advance)
    outputs = predict(rows)  # (n, K)
    errors = np.abs(values.sum(-1) - (outputs - expected))  # (n, K)
    n, k, g = values.shape
    table = pa.table({
        "position": pa.array(np.repeat(explained["position"].to_numpy(), k), type=pa.int32()),
        "source_id": np.repeat(explained["source_id"].to_numpy(), k).tolist(),
        "class_index": pa.array(np.tile(np.arange(k), n), type=pa.int32()),
        "values": pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).reshape(-1)), g),
        "expected": pa.array(np.tile(expected, n)),
        "additivity_error": pa.array(errors.reshape(-1)),
    }).replace_schema_metadata({META_PLAYERS: json.dumps(groups.names).encode()})
    path = write_parquet_atomic(layout.path(run_dir, "kernel_shap"), table)
    check = Check("kernel-shap.additivity", "Kernel SHAP", "additivity (largest error)", float(errors.max()), ADDITIVITY_THRESHOLD, "at most",
                  SECTION_QUALITY, f"Kernel SHAP's largest additivity error ({errors.max():.2e}) exceeds "
                  f"{ADDITIVITY_THRESHOLD:g}: some of its explanations do not account for the model's output.")
    stage_is_kernel = metadata(files["shap_values"]).get(META_ENGINE.decode()) == "kernel"
    return {"files": {"kernel_shap": file_ref(path)},  # the SHAP stage's Kernel SHAP has the one additivity check
            "checks": [] if stage_is_kernel else [check.to_json()], "n_rows": n,
            "max_additivity_error": float(errors.max()), "n_samples": N_SAMPLES[val.modality]}


def kernel_shap_section(data: ReportData, result: dict) -> dict:
    """Kernel SHAP of the predicted class: a heatmap of rows x features (tables; images: with LIME's section)."""
    frame, kernel_values, players = read_kernel_shap(file_of(result, "kernel_shap"))
    positions = list(dict.fromkeys(frame["position"]))
    rows = rows_at(data.explained, positions)
    section = {"n": len(positions), "samples": result["n_samples"], "max_additivity": result["max_additivity_error"],
               "figure": None}
    if data.modality == "table":
        kernel_pred = kernel_values[np.arange(len(positions)), rows["predicted"].to_numpy()]  # (n, players)
        section["figure"] = data.rel(figures.attribution_heatmap(
            kernel_pred, row_labels(rows, data.names), players, data.figure("kernel_shap.png"),
            "Kernel SHAP of the predicted class"))
    return section
