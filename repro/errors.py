"""User-facing errors: the CLI prints the one-line message and exits 2 instead of a traceback."""


class ReproError(Exception):
    """A user-facing error: one line naming the problem and the fix. The CLI prints it and exits 2."""


class DataError(ReproError):
    """A dataset is missing, unreachable or corrupt."""
