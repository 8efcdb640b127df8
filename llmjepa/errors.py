"""User-facing errors: one line, no traceback, non-zero exit (see cli.main)."""


class UserError(Exception):
    """A problem with the user's input or flags, reported as a single line."""


def located(path: object, line: int | None, message: str) -> UserError:
    """An error that names the file and (1-based) line it came from."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return UserError(f"{where}: {message}")
