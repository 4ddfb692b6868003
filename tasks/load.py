"""Step 1, load: read a dataset, split it (stratified, seeded), write both splits as Parquet.

Split file schema (``data/train.parquet``, ``data/validation.parquet``):

| column      | type                            | meaning                                          |
|-------------|---------------------------------|--------------------------------------------------|
| source_id   | string                          | where the row came from (file, batch, row)       |
| label       | int64                           | index into the class names                       |
| inputs      | fixed_size_list<float32>[size]  | images: pixels, channel-first, values in [0, 1]; |
|             |                                 | tables: the feature values, in column order      |

File metadata: ``accountability.class_names`` (JSON list), ``accountability.input_shape``
(JSON ``[C, H, W]`` or ``[n_features]``), ``accountability.modality`` (``image`` | ``table``),
``accountability.feature_names`` (JSON list; tables only) and ``accountability.schema`` (``split/2``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import train_test_split

from tasks.artifacts import new_run_dir, sha256_file, write_parquet_atomic
from tasks.datasets import Dataset, load_dataset
from tasks.errors import InputError
from tasks.resume import clear_partial_files

SCHEMA_TAG = "split/2"
META_CLASSES = b"accountability.class_names"
META_SHAPE = b"accountability.input_shape"
META_MODALITY = b"accountability.modality"
META_FEATURES = b"accountability.feature_names"
META_SCHEMA = b"accountability.schema"


@dataclass
class Split:
    """One split read back from Parquet."""

    inputs: np.ndarray  # (n, C, H, W) images or (n, n_features) table rows, float32
    labels: np.ndarray  # (n,) int64
    source_ids: list[str]
    class_names: list[str]
    modality: str = "image"  # image | table
    feature_names: list[str] = field(default_factory=list)  # tables: one per column of `inputs`


def float32_column(array: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of `array` (any trailing shape) as a fixed-size list<float32> column, flattened row-major."""
    size = int(np.prod(array.shape[1:]))
    flat = pa.array(np.ascontiguousarray(array, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, size)


def float32_rows(column: pa.ChunkedArray, shape: list[int]) -> np.ndarray:
    """A `float32_column` back as a writable float32 array of shape (rows, *shape) (torch needs writable)."""
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=True).reshape(-1, *shape)


def split_table(inputs: np.ndarray, labels: np.ndarray, source_ids: list[str], class_names: list[str],
                modality: str = "image", feature_names: list[str] | None = None) -> pa.Table:
    """The Parquet table for one split, with the schema documented above."""
    shape = list(inputs.shape[1:])
    table = pa.table(
        {
            "source_id": pa.array(source_ids, type=pa.string()),
            "label": pa.array(labels.astype(np.int64), type=pa.int64()),
            "inputs": float32_column(inputs),
        }
    )
    return table.replace_schema_metadata(
        {
            META_CLASSES: json.dumps(class_names).encode(),
            META_SHAPE: json.dumps(shape).encode(),
            META_MODALITY: modality.encode(),
            META_FEATURES: json.dumps(feature_names or []).encode(),
            META_SCHEMA: SCHEMA_TAG.encode(),
        }
    )


def read_split(path: Path) -> Split:
    """Read a split written by `split_table`, validating the file and its schema."""
    try:
        table = pq.read_table(path)
        table.validate(full=True)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    meta = table.schema.metadata or {}
    if meta.get(META_SCHEMA) != SCHEMA_TAG.encode():
        raise InputError(f"{path}: not an accountability split (schema {SCHEMA_TAG} expected)")
    return Split(
        inputs=float32_rows(table.column("inputs"), json.loads(meta[META_SHAPE])),
        labels=table.column("label").to_numpy().astype(np.int64, copy=True),
        source_ids=table.column("source_id").to_pylist(),
        class_names=json.loads(meta[META_CLASSES]),
        modality=meta[META_MODALITY].decode(),
        feature_names=json.loads(meta[META_FEATURES]),
    )


def require_rows(option: str, wanted: int, split: str, available: int) -> None:
    """Refuse a step's request for more rows than its split holds (e.g. --explain against validation)."""
    if wanted > available:
        raise InputError(f"--{option} {wanted} is larger than the {split} split ({available} rows)")


def load_data(dataset: str, out: Path, seed: int, val_fraction: float, background: int = 1, explain: int = 1,
              label: str | None = None, resume: Path | None = None) -> dict:
    """Read `dataset`, create the run directory, write the two splits; return their paths and hashes.

    `background` and `explain` are the later steps' needs from the training and validation
    splits: checked here, so that a run that cannot finish never creates its directory.
    """
    data = load_dataset(dataset, label)
    train_idx, val_idx = _stratified_split(data, seed, val_fraction)
    require_rows("background", background, "training", len(train_idx))
    require_rows("explain", explain, "validation", len(val_idx))
    if resume is not None:  # the same directory again: its split files come out byte-identical
        run_dir = Path(resume).resolve()
        clear_partial_files(run_dir)
    else:
        run_dir = new_run_dir(out, dataset.split(":")[0])
    result = {"run_dir": str(run_dir), "dataset": data.name, "class_names": data.class_names,
              "modality": data.modality, "feature_names": data.feature_names,
              "input_shape": list(data.inputs.shape[1:]), "provenance": data.provenance}
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        path = run_dir / "data" / f"{split}.parquet"
        table = split_table(data.inputs[idx], data.labels[idx], [data.source_ids[i] for i in idx], data.class_names,
                            data.modality, data.feature_names)
        write_parquet_atomic(path, table)
        result[split] = {
            "path": str(path),
            "sha256": sha256_file(path),
            "class_counts": np.bincount(data.labels[idx], minlength=len(data.class_names)).tolist(),
        }
    return result


def _stratified_split(data: Dataset, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    indices = np.arange(len(data.labels))
    n_classes = len(data.class_names)
    n_val = int(round(len(indices) * val_fraction))
    if n_val < n_classes or len(indices) - n_val < n_classes:
        raise InputError(
            f"dataset {data.name} has {len(indices)} rows: too few for a stratified split "
            f"with {n_classes} classes in both training and validation"
        )
    train_idx, val_idx = train_test_split(indices, test_size=n_val, random_state=seed, stratify=data.labels)
    return np.sort(train_idx), np.sort(val_idx)
