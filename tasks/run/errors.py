"""The one exception type that reaches users as a single clear line."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line of text (or its type's name), for a one-line message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class InputError(Exception):
    """Bad input from the user (a dataset, a path, a parameter).

    The command line prints its message alone, without a traceback, and exits non-zero.
    """
