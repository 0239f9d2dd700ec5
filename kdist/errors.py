"""Errors the CLI reports in one line instead of a traceback."""


class UsageError(Exception):
    """Bad input (data rows, paths, incompatible settings), described in one line: exit 2."""


class StageFailed(RuntimeError):
    """A stage ran but its result is not good enough to go on (e.g. too few rows answered);
    the message says why and what a rerun does: exit 1."""
