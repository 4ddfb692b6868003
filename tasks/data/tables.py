"""Tabular dataset sources: scikit-learn's breast-cancer set, and the user's CSV or Parquet files.

A table file holds one row per example: numeric feature columns and one label column
(``--label COLUMN``, any type; its distinct values become the class names). Untrusted
files are validated (pyarrow's full validation), and anything the model cannot take,
such as missing, NaN or infinite values, non-numeric features or a label with too many
distinct values, is refused with the file and the columns named.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from tasks.data.dataset import Dataset
from tasks.data.protected import table_groups
from tasks.run.artifacts import sha256_file
from tasks.run.errors import InputError, first_line

MAX_CLASSES = 100  # more distinct labels than this looks like a continuous target, not classes
MAX_NAMES_SHOWN = 5  # columns named in one error message
# Feature values are used in float32 (the model, standardisation, SHAP, robustness noise): beyond about 1.8e19
# a square overflows to inf (3e38 in one row gave overflow warnings and wrong checks, not an error). 1e15
# leaves room for sums of squares over millions of rows.
MAX_MAGNITUDE = 1e15


def load_breast_cancer() -> Dataset:
    """scikit-learn's Wisconsin breast-cancer set: 569 rows, 30 numeric features, malignant/benign."""
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    data = sklearn_breast_cancer()
    return Dataset(
        name="breast-cancer",
        inputs=data.data.astype(np.float32),
        labels=data.target.astype(np.int64),
        source_ids=[f"breast-cancer:{i}" for i in range(len(data.target))],
        class_names=[str(name) for name in data.target_names],
        provenance={"source": "scikit-learn load_breast_cancer (UCI Breast Cancer Wisconsin, diagnostic)"},
        modality="table",
        feature_names=[str(name) for name in data.feature_names],
    )


def load_table_file(kind: str, path: Path, label: str, protected: tuple[str, ...] = (),
                    keep_protected: bool = False) -> Dataset:
    """Read a CSV or Parquet file of numeric features and a label column into a `Dataset`; `protected`
    columns become its groups (tasks/data/protected.py), and leave the features unless `keep_protected`."""
    table = _read_csv(path) if kind == "csv" else _read_parquet(path)
    groups = table_groups(table, protected, f"{kind}:{path}") if protected else {}
    if protected and label in protected:
        raise InputError(f"{kind}:{path}: the label column {label!r} cannot also be a protected attribute")
    if not keep_protected:
        table = table.drop_columns(list(protected))
    dataset = table_to_dataset(table, label, f"{kind}:{path}", path.name)
    dataset.groups = groups
    dataset.provenance["input_sha256"] = {path.name: sha256_file(path)}
    return dataset


def table_to_dataset(table: pa.Table, label: str, name: str, source: str) -> Dataset:
    """Check a table's columns and values, and turn it into features, labels and class names."""
    columns = table.column_names
    if len(set(columns)) != len(columns):
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        raise InputError(f"{name}: repeated column names {_shown(repeated)}")
    index_like = [c for c in columns if not c.strip() or re.fullmatch(r"Unnamed: \d+|__index_level_\d+__", c)]
    if index_like:  # a row index written with the data (pandas' to_csv default): row order, often sorted by label
        raise InputError(f"{name}: column(s) {_shown(index_like)} have no name: a row index written with the data "
                         "(pandas writes one unless index=False)? As a feature it would leak the row order; "
                         "write the file without it, or name the column if it is a real feature")
    if label not in columns:
        raise InputError(f"{name}: no label column {label!r}; the columns are {_shown(columns)}")
    if table.num_rows == 0:
        raise InputError(f"{name} is empty: no rows")
    features = [c for c in columns if c != label]
    if not features:
        raise InputError(f"{name}: no feature columns besides the label {label!r}")
    not_numeric = [f"{c!r} ({table.schema.field(c).type})" for c in features
                   if not _is_numeric(table.schema.field(c).type)]
    if not_numeric:
        raise InputError(f"{name}: feature columns must be numeric; not numeric: {_shown(not_numeric, quote=False)}")
    missing = [f"{c!r} ({table.column(c).null_count} rows)" for c in features + [label] if table.column(c).null_count]
    if missing:
        raise InputError(f"{name}: missing values in {_shown(missing, quote=False)}")
    inputs = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in features])
    bad = ~np.isfinite(inputs)
    if bad.any():
        named = [f"{features[j]!r} ({int(bad[:, j].sum())} rows)" for j in np.flatnonzero(bad.any(0))]
        raise InputError(f"{name}: NaN or infinite values in {_shown(named, quote=False)}")
    too_big = np.abs(inputs) > MAX_MAGNITUDE
    if too_big.any():
        named = [f"{features[j]!r} (largest {np.abs(inputs[:, j]).max():.3g})" for j in np.flatnonzero(too_big.any(0))]
        raise InputError(f"{name}: values beyond ±{MAX_MAGNITUDE:.0e} in {_shown(named, quote=False)}; the model and the "
                         "techniques compute in float32, where such values overflow when squared: rescale the column "
                         "(thousands, millions, a logarithm)")
    labels, class_names = _encode_labels(table.column(label), name, label)
    return Dataset(
        name=name,
        inputs=inputs.astype(np.float32),
        labels=labels,
        source_ids=[f"{source}:row {i}" for i in range(table.num_rows)],
        class_names=class_names,
        provenance={"source": f"{name}, label column {label!r}", "rows": table.num_rows},
        modality="table",
        feature_names=features,
    )


def _read_csv(path: Path) -> pa.Table:
    try:
        table = pa_csv.read_csv(path)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file: {first_line(exc, 1000)}") from None
    try:
        table.column_names  # noqa: B018 - pyarrow decodes the header's names only when asked
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the header is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} "
                         "in a column name): save the file as UTF-8") from None
    return table


def _read_parquet(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
        table.validate(full=True)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {first_line(exc, 1000)}") from None
    return table


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _encode_labels(column: pa.ChunkedArray, name: str, label: str) -> tuple[np.ndarray, list[str]]:
    """Class indices and names; numeric labels are ordered by value, others by their text."""
    kind = column.type
    if pa.types.is_floating(kind):
        values = column.to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all():
            raise InputError(f"{name}: label column {label!r} has NaN or infinite values")
        column = pc.add(column, 0.0)  # -0.0 becomes 0.0: one class, not two both named "0"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):  # how pyarrow reads text that is not UTF-8
        raise InputError(f"{name}: label column {label!r} is not UTF-8 text: save the file as UTF-8")
    if not (_is_numeric(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_dictionary(kind)):
        raise InputError(f"{name}: label column {label!r} has type {kind}; use numbers or text")
    distinct = pc.unique(column.combine_chunks()).to_pylist()
    if len(distinct) > min(MAX_CLASSES, len(column) // 2):
        raise InputError(f"{name}: label column {label!r} has {len(distinct)} distinct values in {len(column)} rows: "
                         "too many classes (a continuous target?)")
    ordered = sorted(distinct, key=lambda v: (isinstance(v, str), v))
    index = {value: i for i, value in enumerate(ordered)}
    labels = np.array([index[v] for v in column.to_pylist()], dtype=np.int64)
    return labels, [_class_name(v) for v in ordered]


def _class_name(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _shown(names: list[str], quote: bool = True) -> str:
    more = f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else ""
    return ", ".join(repr(n) if quote else n for n in names[:MAX_NAMES_SHOWN]) + more


