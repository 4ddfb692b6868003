"""Readers and writers of the run's own files, and the metadata keys they carry.

Split file schema (``data/train.parquet``, ``data/validation.parquet``):

| column      | type                            | meaning                                          |
|-------------|---------------------------------|--------------------------------------------------|
| source_id   | string                          | where the row came from (file, batch, row)       |
| label       | int64                           | index into the class names                       |
| inputs      | fixed_size_list<float32>[size]  | images: pixels, channel-first, values in [0, 1]; |
|             |                                 | tables: the feature values, in column order      |
| protected:A | string (optional, one per A)    | the row's group of protected attribute A         |

File metadata: ``accountability.class_names`` (JSON list), ``accountability.input_shape``
(JSON ``[C, H, W]`` or ``[n_features]``), ``accountability.modality`` (``image`` | ``table``),
``accountability.feature_names`` (JSON list; tables only) and ``accountability.schema`` (``split/2``).

The SHAP stage's files (``deepshap/``) carry ``accountability.expected_values`` (JSON, per class),
``accountability.input_shape`` and ``accountability.engine``; their schemas are in tasks/deepshap/stage.py.
Steps return the files they wrote as `file_ref`s: ``{"path": ..., "sha256": ...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.run.artifacts import sha256_file, write_parquet_atomic
from tasks.run.errors import InputError

SCHEMA_TAG = "split/2"
META_CLASSES = b"accountability.class_names"
META_SHAPE = b"accountability.input_shape"
META_MODALITY = b"accountability.modality"
META_FEATURES = b"accountability.feature_names"
META_SCHEMA = b"accountability.schema"
META_EXPECTED = b"accountability.expected_values"
META_ENGINE = b"accountability.engine"
META_DEVICE = b"accountability.device"
META_WORKER = b"accountability.worker"
META_PLAYERS = b"accountability.players"
META_SEED = b"accountability.seed"
PROTECTED_PREFIX = "protected:"  # split columns holding protected attributes' groups


def file_ref(path: Path | str) -> dict:
    """A file as steps hand it on: its path and SHA-256 (what a resumed run re-checks)."""
    return {"path": str(path), "sha256": sha256_file(Path(path))}


def write_frame(path: Path, frame: pd.DataFrame) -> dict:
    """A DataFrame as a Parquet file (atomically); its `file_ref`."""
    write_parquet_atomic(Path(path), pa.Table.from_pandas(frame, preserve_index=False))
    return file_ref(path)


@dataclass
class Split:
    """One split read back from Parquet."""

    inputs: np.ndarray  # (n, C, H, W) images or (n, n_features) table rows, float32
    labels: np.ndarray  # (n,) int64
    source_ids: list[str]
    class_names: list[str]
    modality: str = "image"  # image | table
    feature_names: list[str] = field(default_factory=list)  # tables: one per column of `inputs`
    groups: dict[str, list[str]] = field(default_factory=dict)  # protected attribute -> each row's group

    def rows_of(self, source_ids) -> np.ndarray:
        """The inputs of the rows with these source ids, in their order."""
        index = {sid: i for i, sid in enumerate(self.source_ids)}
        return self.inputs[[index[s] for s in source_ids]]


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
                modality: str = "image", feature_names: list[str] | None = None,
                groups: dict[str, list[str]] | None = None) -> pa.Table:
    """The Parquet table for one split, with the schema documented above."""
    table = pa.table({"source_id": pa.array(source_ids, type=pa.string()),
                      "label": pa.array(labels.astype(np.int64), type=pa.int64()),
                      "inputs": float32_column(inputs),
                      **{PROTECTED_PREFIX + name: pa.array(values, type=pa.string())
                         for name, values in (groups or {}).items()}})
    return table.replace_schema_metadata({
        META_CLASSES: json.dumps(class_names).encode(),
        META_SHAPE: json.dumps(list(inputs.shape[1:])).encode(),
        META_MODALITY: modality.encode(),
        META_FEATURES: json.dumps(feature_names or []).encode(),
        META_SCHEMA: SCHEMA_TAG.encode(),
    })


def read_split(path: Path | str) -> Split:
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
        groups={name[len(PROTECTED_PREFIX):]: table.column(name).to_pylist() for name in table.column_names
                if name.startswith(PROTECTED_PREFIX)},
    )


def metadata(path: Path | str) -> dict[str, str]:
    """A Parquet file's key-value metadata, decoded."""
    return {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}


def read_shap_values(path: Path | str) -> tuple[np.ndarray, dict]:
    """SHAP values as (n_rows, K, *input_shape) and the file's metadata (decoded)."""
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    shape = json.loads(meta[META_SHAPE.decode()])
    n_classes = len(json.loads(meta[META_EXPECTED.decode()]))
    values = table.column("values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, n_classes, *shape), meta


def background_images(background_path: Path | str) -> np.ndarray:
    """The training images (or rows) a run used as its SHAP background, from ``deepshap/background.parquet``."""
    table = pq.read_table(background_path)
    if "inputs" not in table.column_names:
        raise InputError(f"{background_path} has no inputs: the run was written by an older version; run it again")
    return float32_rows(table.column("inputs"), json.loads(table.schema.metadata[META_SHAPE]))


def read_kernel_shap(path: Path | str) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The Kernel SHAP table, its values as (n_rows, K, n_players), and the player names."""
    table = pq.read_table(path)
    players = json.loads(table.schema.metadata[META_PLAYERS])
    frame = table.drop_columns(["values"]).to_pandas()
    k = int(frame["class_index"].max()) + 1
    values = table.column("values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return frame, values.reshape(-1, k, len(players)), players
