"""The `--dataset` spec: which source, and its directory or file.

- images: ``digits`` (built in), ``cifar10:DIR``, ``imagefolder:DIR``;
- tables: ``breast-cancer`` (built in), ``csv:FILE``, ``parquet:FILE`` (with ``--label COLUMN``).
"""

from __future__ import annotations

from pathlib import Path

from tasks.run.errors import InputError, user_path

BUILT_IN = ("digits", "breast-cancer")  # ship inside scikit-learn
DIRECTORY_KINDS = ("cifar10", "imagefolder")  # image sources: KIND:DIR
FILE_KINDS = ("csv", "parquet")  # tables: KIND:FILE, with --label COLUMN
SPEC_HELP = "digits, breast-cancer, cifar10:DIR, imagefolder:DIR, csv:FILE or parquet:FILE"


def parse_dataset_spec(spec: str, label: str | None = None) -> tuple[str, str]:
    """(kind, argument) of a spec, checked for form only (no file is looked at)."""
    if not isinstance(spec, str):
        raise InputError(f"dataset spec must be text, got {spec!r}")
    kind, sep, arg = spec.partition(":")
    if kind not in BUILT_IN + DIRECTORY_KINDS + FILE_KINDS:
        raise InputError(f"unknown dataset spec {spec!r}: use {SPEC_HELP}")
    if kind in BUILT_IN and sep:
        raise InputError(f"dataset spec {spec!r}: {kind} takes no argument")
    if kind in FILE_KINDS and not label:
        raise InputError(f"dataset spec {spec!r} needs --label COLUMN, the column holding the class")
    if label and kind not in FILE_KINDS:
        raise InputError(f"--label is for csv:FILE and parquet:FILE datasets, not {kind}")
    if kind in DIRECTORY_KINDS + FILE_KINDS and not arg:
        placeholder = "DIR" if kind in DIRECTORY_KINDS else "FILE"
        raise InputError(f"dataset spec {spec!r} needs a {'directory' if placeholder == 'DIR' else 'file'}: "
                         f"{kind}:{placeholder}")
    return kind, arg


def check_dataset_source(spec: str, label: str | None = None) -> None:
    """The spec's directory or file exists (the preflight's check, before any work starts)."""
    kind, arg = parse_dataset_spec(spec, label)
    if kind in BUILT_IN:
        return
    path = user_path(arg, "dataset", resolve=False)
    if kind in DIRECTORY_KINDS and not path.is_dir():
        raise InputError(f"dataset directory {path.resolve()} does not exist or is not a directory")
    if kind in FILE_KINDS and not path.is_file():
        raise InputError(f"dataset file {path.resolve()} does not exist or is not a file")
