"""Read the dataset a `--dataset` spec names (tasks/data/specs.py) from its source."""

from __future__ import annotations

from pathlib import Path

from tasks.data import images, tables
from tasks.data.dataset import Dataset, validate_dataset
from tasks.data.specs import check_dataset_source, parse_dataset_spec


def load_dataset(spec: str, label: str | None = None) -> Dataset:
    """Read the dataset named by `spec`, or raise InputError saying what is wrong with it."""
    kind, arg = parse_dataset_spec(spec, label)
    check_dataset_source(spec, label)
    if kind == "digits":
        dataset = images.load_digits()
    elif kind == "breast-cancer":
        dataset = tables.load_breast_cancer()
    elif kind in ("csv", "parquet"):
        dataset = tables.load_table_file(kind, Path(arg).expanduser().resolve(), label)
    else:
        loaders = {"cifar10": images.load_cifar10, "imagefolder": images.load_imagefolder}
        dataset = loaders[kind](Path(arg).expanduser().resolve())
    validate_dataset(dataset)
    return dataset
