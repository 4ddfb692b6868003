"""Protected attributes: the groups a fairness assessment compares (tasks/techniques/fairness.py).

Tables name them with ``--protected COLUMN[,COLUMN]``: those columns become groups and leave the
model's features (unless ``--keep-protected``: then they stay features too, and must be numeric).
Any dataset can take them from ``--metadata FILE``, a CSV with a ``file`` column naming each row
as its source id does after the dataset kind (``cat/0001.png`` or ``0001.png`` for an image
folder, ``data_batch_1:17`` for CIFAR-10, ``17`` for digits and breast-cancer, ``row 17`` for a
table file) and one column per protected attribute. Group values are text; a missing value is the
group "missing" (so is an empty one), a row the metadata does not name the group "not in metadata".
"""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from tasks.data.dataset import lookalikes
from tasks.run.errors import InputError, first_line

KEY = "file"
MISSING = "missing"
NOT_NAMED = "not in metadata"
MAX_GROUPS = 50  # more distinct values than this looks like an identifier, not a group


def group_values(column: pa.ChunkedArray, name: str, source: str) -> list[str]:
    """A column's values as group names (text), "missing" for nulls; InputError for too many distinct ones."""
    raw = column.to_pylist()
    empty = [v is None or not str(v).strip() for v in raw]
    if any(empty) and MISSING in {str(v) for v, e in zip(raw, empty) if not e}:
        raise InputError(f"{source}: protected column {name!r} holds the value {MISSING!r} and empty cells, which "
                         f"would be merged into one group {MISSING!r}; rename the value")
    values = [MISSING if e else str(v) for v, e in zip(raw, empty)]
    distinct = set(values)
    if clash := lookalikes(sorted(distinct)):
        raise InputError(f"{source}: protected column {name!r} has groups {clash[0]!r} and {clash[1]!r}, which read "
                         "the same in a report (they differ only in invisible, spacing or compatibility characters); "
                         "make them one value or rename one")
    if len(distinct) > MAX_GROUPS:
        raise InputError(f"{source}: protected column {name!r} has {len(distinct)} distinct values; a protected "
                         f"attribute has at most {MAX_GROUPS} groups (bin a continuous one first)")
    return values


def table_groups(table: pa.Table, protected: tuple[str, ...], source: str) -> dict[str, list[str]]:
    missing = [c for c in protected if c not in table.column_names]
    if missing:
        raise InputError(f"{source}: no protected column(s) {missing}; the columns are {table.column_names[:20]}")
    return {c: group_values(table.column(c), c, source) for c in protected}


def metadata_groups(path: Path, protected: tuple[str, ...], source_ids: list[str]) -> dict[str, list[str]]:
    """Each row's group per protected attribute, from the metadata CSV at `path`, matched by KEY."""
    try:
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
            column_types={c: pa.string() for c in (KEY, *protected)}))
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputError(f"--metadata {path}: not a readable CSV file: {first_line(exc, 500)}") from None
    if KEY not in table.column_names:
        raise InputError(f"--metadata {path} has no {KEY!r} column naming each row (image file or row id)")
    groups = table_groups(table, protected, f"--metadata {path}")
    keys = table.column(KEY).to_pylist()
    if len(set(keys)) != len(keys):
        raise InputError(f"--metadata {path}: the {KEY!r} column names some rows twice")
    index = {k: i for i, k in enumerate(keys)}
    found = [_lookup(index, sid) for sid in source_ids]
    named_twice = collections.Counter(i for i in found if i is not None)
    if twice := next((keys[i] for i, count in named_twice.items() if count > 1), None):
        rows = [sid for sid, i in zip(source_ids, found) if i is not None and keys[i] == twice][:3]
        raise InputError(f"--metadata {path}: the {KEY!r} value {twice!r} names several rows ({', '.join(rows)}); "
                         "name each row once, e.g. with its class folder (class/file.png)")
    if all(i is None for i in found):
        raise InputError(f"--metadata {path}: no {KEY!r} value names a row of the dataset (for example "
                         f"{source_ids[0].split(':', 1)[-1]!r})")
    return {name: [NOT_NAMED if i is None else values[i] for i in found] for name, values in groups.items()}


def _lookup(index: dict[str, int], source_id: str) -> int | None:
    """The metadata row of a source id: by what follows the dataset kind, or by its last path component."""
    after_kind = source_id.split(":", 1)[-1]
    for key in (after_kind, after_kind.rsplit("/", 1)[-1], after_kind.rsplit(":", 1)[-1]):
        if key in index:
            return index[key]
    return None
