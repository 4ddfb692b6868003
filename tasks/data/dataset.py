"""The one in-memory form every dataset source is read into, and the checks every dataset must pass."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np

from tasks.run.errors import InputError


@dataclass
class Dataset:
    """A whole dataset in memory: images channel-first in [0, 1], or table rows of numeric features."""

    name: str  # the spec it was read from
    inputs: np.ndarray  # (n, C, H, W) images or (n, n_features) rows, float32
    labels: np.ndarray  # (n,) int64, indices into class_names
    source_ids: list[str]  # where each row came from, e.g. "cifar10:data_batch_1:17"
    class_names: list[str]
    provenance: dict = field(default_factory=dict)  # facts for the report: source, input files' SHA-256

    modality: str = "image"  # image | table
    feature_names: list[str] = field(default_factory=list)  # tables: one per column of `inputs`
    groups: dict[str, list[str]] = field(default_factory=dict)  # protected attribute -> each row's group


def validate_dataset(dataset: Dataset) -> None:
    """Refuse data the pipeline cannot train and validate on."""
    n = len(dataset.labels)
    if n == 0:
        raise InputError(f"dataset {dataset.name} is empty")
    ndim = 4 if dataset.modality == "image" else 2
    if dataset.inputs.ndim != ndim or dataset.inputs.shape[0] != n:
        raise InputError(f"dataset {dataset.name}: inputs must have {ndim} dimensions, got {dataset.inputs.shape}")
    if not np.isfinite(dataset.inputs).all():
        raise InputError(f"dataset {dataset.name} has NaN or infinite input values")
    k = len(dataset.class_names)
    invisible = [name for name in dataset.class_names if not any(_visible(ch) for ch in name)]
    if invisible:
        raise InputError(f"dataset {dataset.name}: class names {invisible[:5]} have no visible character; "
                         "a report could not show them")
    for kind, names in (("class", dataset.class_names), ("feature", dataset.feature_names),
                        ("protected group", group_names(dataset.groups))):
        if reordering := [name for name in names if BIDI_CONTROLS.intersection(name)]:
            raise InputError(f"dataset {dataset.name}: {kind} name {reordering[0]!r} holds a bidirectional control "
                             "character, which reorders the text around it in the report; remove it")
        if kind == "protected group":
            continue
        if clash := lookalikes(names):
            raise InputError(f"dataset {dataset.name}: {kind} names {clash[0]!r} and {clash[1]!r} read the same in a "
                             "report (they differ only in invisible, spacing or compatibility characters); rename one")
    if dataset.labels.min() < 0 or dataset.labels.max() >= k:
        raise InputError(f"dataset {dataset.name} has labels outside 0..{k - 1}")
    for attribute, values in dataset.groups.items():
        if len(values) != n:
            raise InputError(f"dataset {dataset.name}: protected attribute {attribute!r} has {len(values)} values "
                             f"for {n} rows")
    counts = np.bincount(dataset.labels, minlength=k)
    present = int((counts > 0).sum())
    if present < 2:
        raise InputError(f"dataset {dataset.name} has a single class; a classifier needs at least two")
    if counts.min() < 2:
        sparse = [dataset.class_names[i] for i in np.flatnonzero(counts < 2)]
        more = f" and {len(sparse) - 5} more" if len(sparse) > 5 else ""
        raise InputError(
            f"dataset {dataset.name}: classes {sparse[:5]}{more} have fewer than 2 rows, "
            "too few to split into training and validation"
        )


def group_names(groups: dict[str, list]) -> list[str]:
    """The protected attributes' names, then their groups' (each once): the names the report shows of them."""
    return [*groups, *sorted({str(v) for values in groups.values() for v in values})]


# Embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): in a name they would reorder the report's
# text beyond the name itself ("Trojan Source"); a right-to-left script needs none of them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def reading(name: str) -> str:
    """What a reader sees of a name: NFKC-normalised (compatibility forms such as full-width letters folded),
    invisible characters dropped, runs of spaces as one."""
    shown = "".join(ch if _visible(ch) or ch.isspace() else "" for ch in unicodedata.normalize("NFKC", name))
    return " ".join(shown.split())


def lookalikes(names: list[str]) -> tuple[str, str] | None:
    """The first two different names that read the same (`reading`), or None."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(reading(name), name)
        if other != name:
            return other, name
    return None


def _visible(ch: str) -> bool:
    """A character that prints something (not a space, control, format or unassigned code point)."""
    return unicodedata.category(ch)[0] not in "ZC"


def require_rows(option: str, wanted: int, split: str, available: int) -> None:
    """Refuse a step's request for more rows than its split holds (e.g. --explain against validation)."""
    if wanted > available:
        raise InputError(f"--{option} {wanted} is larger than the {split} split ({available} rows)")
