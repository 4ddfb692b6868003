"""Step 1, load: read a dataset, split it (stratified, seeded), write both splits as Parquet.

Split file schema (``data/train.parquet``, ``data/validation.parquet``):

| column      | type                            | meaning                                   |
|-------------|---------------------------------|-------------------------------------------|
| source_id   | string                          | where the image came from                 |
| label       | int64                           | index into the class names                |
| image       | fixed_size_list<float32>[C*H*W] | pixels, channel-first, values in [0, 1]   |

File metadata: ``accountability.class_names`` (JSON list), ``accountability.image_shape``
(JSON ``[C, H, W]``) and ``accountability.schema`` (``image-split/1``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import train_test_split

from tasks.artifacts import new_run_dir, sha256_file, write_parquet_atomic
from tasks.datasets import ImageDataset, load_dataset
from tasks.errors import InputError

SCHEMA_TAG = "image-split/1"
META_CLASSES = b"accountability.class_names"
META_SHAPE = b"accountability.image_shape"
META_SCHEMA = b"accountability.schema"


@dataclass
class Split:
    """One split read back from Parquet."""

    images: np.ndarray  # (n, C, H, W) float32
    labels: np.ndarray  # (n,) int64
    source_ids: list[str]
    class_names: list[str]


def split_table(images: np.ndarray, labels: np.ndarray, source_ids: list[str], class_names: list[str]) -> pa.Table:
    """The Parquet table for one split, with the schema documented above."""
    n, c, h, w = images.shape
    flat = pa.array(np.ascontiguousarray(images, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "source_id": pa.array(source_ids, type=pa.string()),
            "label": pa.array(labels.astype(np.int64), type=pa.int64()),
            "image": pa.FixedSizeListArray.from_arrays(flat, c * h * w),
        }
    )
    return table.replace_schema_metadata(
        {
            META_CLASSES: json.dumps(class_names).encode(),
            META_SHAPE: json.dumps([c, h, w]).encode(),
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
        raise InputError(f"{path}: not an accountability image split (schema {SCHEMA_TAG} expected)")
    class_names = json.loads(meta[META_CLASSES])
    c, h, w = json.loads(meta[META_SHAPE])
    pixels = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return Split(
        images=pixels.astype(np.float32, copy=True).reshape(-1, c, h, w),  # writable, for torch
        labels=table.column("label").to_numpy().astype(np.int64, copy=True),
        source_ids=table.column("source_id").to_pylist(),
        class_names=class_names,
    )


def require_images(option: str, wanted: int, split: str, available: int) -> None:
    """Refuse a step's request for more images than its split holds (e.g. --explain against validation)."""
    if wanted > available:
        raise InputError(f"--{option} {wanted} is larger than the {split} split ({available} images)")


def load_data(dataset: str, out: Path, seed: int, val_fraction: float, background: int = 1, explain: int = 1) -> dict:
    """Read `dataset`, create the run directory, write the two splits; return their paths and hashes.

    `background` and `explain` are the later steps' needs from the training and validation
    splits: checked here, so that a run that cannot finish never creates its directory.
    """
    data = load_dataset(dataset)
    train_idx, val_idx = _stratified_split(data, seed, val_fraction)
    require_images("background", background, "training", len(train_idx))
    require_images("explain", explain, "validation", len(val_idx))
    run_dir = new_run_dir(out, dataset.split(":")[0])
    result = {"run_dir": str(run_dir), "dataset": data.name, "class_names": data.class_names,
              "image_shape": list(data.images.shape[1:]), "provenance": data.provenance}
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        path = run_dir / "data" / f"{split}.parquet"
        table = split_table(data.images[idx], data.labels[idx], [data.source_ids[i] for i in idx], data.class_names)
        write_parquet_atomic(path, table)
        result[split] = {
            "path": str(path),
            "sha256": sha256_file(path),
            "class_counts": np.bincount(data.labels[idx], minlength=len(data.class_names)).tolist(),
        }
    return result


def _stratified_split(data: ImageDataset, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    indices = np.arange(len(data.labels))
    n_classes = len(data.class_names)
    n_val = int(round(len(indices) * val_fraction))
    if n_val < n_classes or len(indices) - n_val < n_classes:
        raise InputError(
            f"dataset {data.name} has {len(indices)} images: too few for a stratified split "
            f"with {n_classes} classes in both training and validation"
        )
    train_idx, val_idx = train_test_split(indices, test_size=n_val, random_state=seed, stratify=data.labels)
    return np.sort(train_idx), np.sort(val_idx)
