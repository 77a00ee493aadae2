"""User-facing errors: the CLI prints the one-line message and exits 2 instead of a traceback."""


class ReproError(Exception):
    """A user-facing error: one line naming the problem and the fix. The CLI prints it and exits 2."""

    def __str__(self) -> str:
        # A DataLoader worker's error comes back with the worker's traceback as its message: keep its last line.
        msg = super().__str__()
        if "Original Traceback" in msg:
            msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
        return msg


class DataError(ReproError):
    """A dataset is missing, unreachable or corrupt."""
