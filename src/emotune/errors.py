"""Errors that the CLI turns into a one-line message and exit code 2 (no traceback)."""


class EmotuneError(Exception):
    """Base class of errors caused by the user's input rather than a bug."""


class ConfigError(EmotuneError):
    """A bad option, config file or override."""


class DataError(EmotuneError):
    """Unreadable or malformed data; the message names the file and, where known, the line."""

    def __init__(self, message: str, path: object = None, line: int | None = None):
        where = f"{path}:{line}: " if path is not None and line is not None else f"{path}: " if path else ""
        super().__init__(f"{where}{message}")
        self.path, self.line = path, line


class RunError(EmotuneError):
    """A run folder that is missing, incomplete or inconsistent."""
