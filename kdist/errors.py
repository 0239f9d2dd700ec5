"""Errors that mean 'the user asked for something wrong': the CLI prints one line, exits 2."""


class UsageError(Exception):
    """Bad input (data rows, paths, incompatible settings), described in one line."""
