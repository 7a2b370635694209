"""The errors nanolog raises. Every problem with a log file's bytes is a ``LogFileError``."""
from __future__ import annotations


class LogFileError(Exception):
    """A file that cannot be decoded (completely). ``path`` may be None for in-memory data."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class EmptyLogError(LogFileError):
    """The file has no bytes at all (not even the header)."""


class NotANanologFile(LogFileError):
    """The file does not start with the nanolog magic."""


class UnsupportedVersion(LogFileError):
    """A nanolog file of a format version this decoder does not know."""

    def __init__(self, message: str, path: str | None = None, version: int = 0):
        super().__init__(message, path)
        self.version = version


class DamagedLogError(LogFileError):
    """Decoding stopped at ``offset``: everything before it was decoded and yielded."""

    def __init__(self, message: str, path: str | None = None, offset: int = 0):
        super().__init__(message, path)
        self.offset = offset
