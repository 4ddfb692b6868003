"""The load step: read a dataset, split it (stratified, seeded), write both splits as Parquet.

The split files' schema is in tasks/run/formats.py; their paths in tasks/run/layout.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from tasks.data.dataset import Dataset, require_rows
from tasks.data.sources import load_dataset
from tasks.run import layout
from tasks.run.artifacts import new_run_dir, write_parquet_atomic
from tasks.run.config import DEFAULT_BACKGROUND, DEFAULT_EXPLAIN
from tasks.run.errors import InputError
from tasks.run.formats import file_ref, read_split, split_table
from tasks.run.resume import clear_partial_files
from tasks.steps.supplied import fit_data_to_model
from tasks.techniques.challenger import owner_challenger
from tasks.techniques.positive import positive_index


@dataclass(frozen=True)
class CheckedData:
    """A dataset read, fitted to the supplied model (if any) and split: everything the load step writes."""

    data: Dataset
    supplied: dict | None  # fit_data_to_model's record of the supplied model, None when training
    train_idx: np.ndarray
    val_idx: np.ndarray
    sizes: dict  # fit_sizes: the background and explained rows the run uses, and why


def fit_sizes(background: int | None, explain_rows: int | None, n_train: int, n_validation: int) -> dict:
    """The background and explained rows a run uses. A number the user gave must fit its split (else
    InputError); a default (None) is cut to the split's rows when it has fewer, and `why` says so for the
    report's parameters table."""
    sizes, why = {}, {}
    for key, option, given, split, available, default in (
            ("background", "background", background, "training", n_train, DEFAULT_BACKGROUND),
            ("explain_rows", "explain", explain_rows, "validation", n_validation, DEFAULT_EXPLAIN)):
        if given is not None:
            require_rows(option, given, split, available)
            sizes[key], why[key] = given, "given"
        else:
            sizes[key] = min(default, available)
            why[key] = (f"default {default}" if sizes[key] == default else
                        f"default {default}, cut to the {split} split's {available} rows")
    return {**sizes, "why": why}


_CHECKED: dict[tuple, CheckedData] = {}  # the CLI's check, kept for its own run's load step (taken once)


def check_data(dataset: str, seed: int, val_fraction: float, background: int | None = 1,
               explain_rows: int | None = 1,
               label: str | None = None, model: Path | None = None, outputs: str | None = None,
               protected: tuple[str, ...] = (), metadata: Path | None = None, keep_protected: bool = False,
               positive_class: str | None = None, challenger: Path | None = None, keep: bool = False) -> CheckedData:
    """Read `dataset` and split it, or InputError saying why the run cannot work with it.

    `background` and `explain_rows` are the later steps' needs from the training and validation
    splits: checked here, so that a run that cannot finish never creates its directory. So is a
    supplied `model` (tasks/steps/supplied.py): the data is fitted to its input and it is run on all of it.
    The CLI calls this before Prefect's server starts (`keep=True`), and its load step takes that result.
    """
    key = (dataset, seed, val_fraction, background, explain_rows, label, str(model), outputs, tuple(protected),
           str(metadata), keep_protected, positive_class, str(challenger))
    if (checked := _CHECKED.pop(key, None)) is not None:
        return checked
    data = load_dataset(dataset, label, tuple(protected), metadata, keep_protected)
    supplied = None
    if model is not None:
        data, supplied = fit_data_to_model(data, Path(model), outputs)
    positive_index(data.class_names, positive_class)
    if challenger is not None:  # it must take the same inputs: tried on a few rows
        owner_challenger(Path(challenger), data.inputs[:4], data.feature_names, len(data.class_names))
    train_idx, val_idx = _stratified_split(data, seed, val_fraction)
    sizes = fit_sizes(background, explain_rows, len(train_idx), len(val_idx))
    checked = CheckedData(data, supplied, train_idx, val_idx, sizes)
    if keep:
        _CHECKED[key] = checked
    return checked


def load_data(dataset: str, out: Path, seed: int, val_fraction: float, background: int | None = 1,
              explain_rows: int | None = 1,
              label: str | None = None, resume: Path | None = None, model: Path | None = None,
              outputs: str | None = None, protected: tuple[str, ...] = (), metadata: Path | None = None,
              keep_protected: bool = False, positive_class: str | None = None,
              challenger: Path | None = None) -> dict:
    """Read and check `dataset` (`check_data`), create the run directory, write the two splits; return their
    paths and hashes."""
    checked = check_data(dataset, seed, val_fraction, background, explain_rows, label, model, outputs, protected,
                         metadata, keep_protected, positive_class, challenger)
    data, supplied = checked.data, checked.supplied
    if resume is not None:  # the same directory again: its split files come out byte-identical
        run_dir = Path(resume).resolve()
        clear_partial_files(run_dir)
    else:
        run_dir = new_run_dir(out, dataset.split(":")[0])
    result = {"run_dir": str(run_dir), "dataset": data.name, "class_names": data.class_names,
              "modality": data.modality, "feature_names": data.feature_names,
              "input_shape": list(data.inputs.shape[1:]), "provenance": data.provenance, "model": supplied,
              "sizes": checked.sizes,
              "protected": {"attributes": list(data.groups), "kept_as_features": bool(keep_protected and data.groups
                                                                                      and metadata is None)}}
    result["files"], result["class_counts"] = {}, {}
    for split, idx in (("train", checked.train_idx), ("validation", checked.val_idx)):
        if resume is not None:
            _same_as_recorded(layout.path(run_dir, split), data, idx)
        table = split_table(data.inputs[idx], data.labels[idx], [data.source_ids[i] for i in idx], data.class_names,
                            data.modality, data.feature_names,
                            {name: [values[i] for i in idx] for name, values in data.groups.items()})
        result["files"][split] = file_ref(write_parquet_atomic(layout.path(run_dir, split), table))
        result["class_counts"][split] = np.bincount(data.labels[idx], minlength=len(data.class_names)).tolist()
    return result


def _same_as_recorded(path: Path, data: Dataset, idx: np.ndarray) -> None:
    """A resumed run must load the data it loaded first: its split file (if written) holds the same rows.
    run.json edited to another dataset, or a dataset changed in place, is refused, not mixed into the run."""
    if not path.is_file():
        return
    recorded = read_split(path)
    same = (recorded.source_ids == [data.source_ids[i] for i in idx] and recorded.class_names == data.class_names
            and np.array_equal(recorded.labels, data.labels[idx]) and np.array_equal(recorded.inputs, data.inputs[idx]))
    if not same:
        raise InputError(f"--resume: the data loaded now ({data.name}) differs from the run's own {path.name}: its "
                         "run.json or its dataset changed since it started; start a new run")


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
