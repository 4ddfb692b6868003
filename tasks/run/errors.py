"""The exception types that reach users as a single clear line: bad input, and a file system that refused a run's
files."""

import errno
import os
from pathlib import Path


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line of text (or its type's name), for a one-line message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class InputError(Exception):
    """Bad input from the user (a dataset, a path, a parameter).

    The command line prints its message alone, without a traceback, and exits non-zero.
    """


def require_utf8(text: str, what: str) -> str:
    """`text` when it is valid UTF-8; InputError otherwise. A name from the file system or the command line that is
    not UTF-8 reaches Python as surrogate escapes, which Parquet, JSON files and the PDF cannot hold: refused where
    it enters, in one line showing its bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} {os.fsencode(text)!r} is not valid UTF-8 (names and paths reach the report): "
                         "rename it") from None
    return text


def user_path(value, what: str = "path", resolve: bool = True) -> Path:
    """A path a user gave, with `~` and `~user` expanded (and resolved); InputError, not a RuntimeError traceback,
    for a `~user` this system does not know."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "Could not determine home directory"
        raise InputError(f"{what} {value}: no such user's home directory") from None
    return path.resolve() if resolve else path


class NonFiniteOutputs(InputError):
    """The model returned NaN or infinity on inputs a technique made (perturbed, masked or sampled rows): they are
    never scored; a step reports them as a finding instead (flows/steps.py), a command in one line."""

    def __init__(self, count: int, total: int):
        super().__init__(f"the model returned NaN or infinite outputs on {count} of {total} inputs")
        self.count, self.total = count, total


class StorageError(Exception):
    """A run's file could not be written: its file system is full, read-only or refuses the name. The command line
    prints the message alone (naming the file) with how to finish the run once that is mended."""


# Errors a file system gives for a write that the writer cannot help (not a bug of the writer's).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                            errno.EIO, errno.EFBIG, errno.EMLINK})
FULL_BELOW_BYTES = 2**20  # free space under this after a failed write: the file system is full


def storage_problem(directory: Path, exc: BaseException) -> str | None:
    """Why the file system holding `directory` refused a write that failed with `exc`, or None when it did not
    (the writer's own error, re-raised as it is). Writers do not all say: pyarrow's OSError has no errno,
    safetensors raises its own type, so the file system itself is asked first."""
    try:
        fs = os.statvfs(next(p for p in (directory, *directory.parents) if p.exists()))
    except OSError:
        fs = None
    if fs is not None and fs.f_flag & os.ST_RDONLY:
        return "its file system is read-only"
    if fs is not None and fs.f_bavail * fs.f_frsize < FULL_BELOW_BYTES:
        return f"its file system is full ({fs.f_bavail * fs.f_frsize // 1024} KiB free)"
    if fs is not None and fs.f_files and not fs.f_favail:
        return "its file system has no free inodes (no room for another file)"
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return os.strerror(exc.errno)
    return None
