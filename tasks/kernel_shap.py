"""Model-agnostic SHAP: Kernel SHAP (shap.KernelExplainer) on any predict function.

Tables: the features are the players; absent features take the values of background rows
(a seeded sample of the run's SHAP background), shap's standard Kernel SHAP. Images: the
players are the KERNEL_GRID x KERNEL_GRID patches; an absent patch takes the mean background
image's pixels. Either way the values add up, by construction, to f(x) - f(reference).

File ``explain/kernel_shap.parquet``, one row per (explained row, class): position, source_id,
class_index, values (fixed_size_list<float32>[n_players]), expected (f at the reference),
additivity_error. Metadata ``accountability.players`` (JSON list of player names).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.artifacts import sha256_file, write_parquet_atomic
from tasks.explain import background_images
from tasks.feature_groups import KERNEL_GRID, FeatureGroups, feature_columns, image_regions
from tasks.load import read_split
from tasks.model import load_weights
from tasks.progress import progress_bar
from tasks.train import predict_proba

N_SAMPLES = {"table": 1024, "image": 1024}  # coalitions evaluated per explained row
MAX_ROWS = {"table": 64, "image": 8}  # explained rows given Kernel SHAP (the first of the explain step's)
TABLE_BACKGROUND = 50  # background rows Kernel SHAP averages over, for tables


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


def explain_kernel_shap(weights_path: Path, validation_path: Path, explained_path: Path, background_path: Path,
                        run_dir: Path, seed: int) -> dict:
    """Kernel SHAP for the first MAX_ROWS rows the explain step chose; write Parquet."""
    model, _, _ = load_weights(Path(weights_path))
    val = read_split(Path(validation_path))
    explained = pq.read_table(explained_path).to_pandas().head(MAX_ROWS[val.modality])
    index = {sid: i for i, sid in enumerate(val.source_ids)}
    rows = val.inputs[[index[s] for s in explained["source_id"]]]
    background = background_images(Path(background_path))

    def predict(x: np.ndarray) -> np.ndarray:
        return predict_proba(model, x)

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
    }).replace_schema_metadata({b"accountability.players": json.dumps(groups.names).encode()})
    path = write_parquet_atomic(Path(run_dir) / "explain" / "kernel_shap.parquet", table)
    return {"kernel_shap": {"path": str(path), "sha256": sha256_file(path)}, "n_rows": n,
            "max_additivity_error": float(errors.max()), "n_samples": N_SAMPLES[val.modality]}


def read_kernel_shap(path: Path) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The Kernel SHAP table, its values as (n_rows, K, n_players), and the player names."""
    table = pq.read_table(path)
    players = json.loads(table.schema.metadata[b"accountability.players"])
    frame = table.drop_columns(["values"]).to_pandas()
    k = int(frame["class_index"].max()) + 1
    values = table.column("values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return frame, values.reshape(-1, k, len(players)), players
