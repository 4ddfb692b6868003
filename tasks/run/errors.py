"""The one exception type that reaches users as a single clear line."""

import os


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
