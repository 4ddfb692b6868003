"""The one exception type that reaches users as a single clear line."""


class InputError(Exception):
    """Bad input from the user (a dataset, a path, a parameter).

    The command line prints its message alone, without a traceback, and exits non-zero.
    """
