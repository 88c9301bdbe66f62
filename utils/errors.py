"""Errors that are the user's to fix: the scripts print them as one line and exit non-zero."""


class UserError(Exception):
    """Bad input (flags, data, checkpoint, path). The message names the problem and the fix."""


class DataError(UserError):
    """Missing, malformed or inconsistent dataset files."""
