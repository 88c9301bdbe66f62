"""Errors that are the user's to fix: the scripts print them as one line and exit non-zero."""


class UserError(Exception):
    """Bad input (flags, data, checkpoint, path). The message names the problem and the fix."""


class DataError(UserError):
    """Missing, malformed or inconsistent dataset files."""


class WriteFault(UserError):
    """A file could not be written (full disk, read-only file system, file-size limit, a
    symbolic link where a file was expected); its previous version is intact."""
