"""Read the dataset a `--dataset` spec names (tasks/data/specs.py) from its source."""

from __future__ import annotations

from pathlib import Path

from tasks.data import images, tables
from tasks.data.dataset import Dataset, validate_dataset
from tasks.data.protected import metadata_groups
from tasks.data.specs import check_dataset_source, parse_dataset_spec
from tasks.run.errors import InputError, user_path
from tasks.run.artifacts import sha256_file


def load_dataset(spec: str, label: str | None = None, protected: tuple[str, ...] = (), metadata: Path | None = None,
                 keep_protected: bool = False) -> Dataset:
    """Read the dataset named by `spec`, or raise InputError saying what is wrong with it.

    `protected` attributes come from `metadata` when given, else from a table file's columns
    (tasks/data/protected.py)."""
    kind, arg = parse_dataset_spec(spec, label)
    check_dataset_source(spec, label)
    if protected and metadata is None and kind not in ("csv", "parquet"):
        raise InputError(f"--protected names columns of a csv:FILE or parquet:FILE table; for {kind} data give "
                         "--metadata FILE, a CSV with a 'file' column and the protected columns")
    if kind == "digits":
        dataset = images.load_digits()
    elif kind == "breast-cancer":
        dataset = tables.load_breast_cancer()
    elif kind in ("csv", "parquet"):
        from_table = () if metadata is not None else protected
        dataset = tables.load_table_file(kind, user_path(arg), label, from_table, keep_protected)
    else:
        loaders = {"cifar10": images.load_cifar10, "imagefolder": images.load_imagefolder}
        dataset = loaders[kind](user_path(arg))
    if metadata is not None:
        dataset.groups = metadata_groups(Path(metadata), protected, dataset.source_ids)
        dataset.provenance["metadata_sha256"] = {Path(metadata).name: sha256_file(Path(metadata))}
    validate_dataset(dataset)
    return dataset
