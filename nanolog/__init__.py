"""nanolog: a NanoLog-style binary logger for Python.

A call records only a format id, a timestamp and the binary arguments; formatting happens
later, in the decoder (``nanolog.read``) or the ``nanolog`` command-line tool.
"""
from nanolog.errors import (DamagedLogError, EmptyLogError, LogFileError, NotANanologFile,
                            UnsupportedVersion)
from nanolog.format import LEVELS, level_name
from nanolog.handler import NanologHandler
from nanolog.logger import Logger, Statistics
from nanolog.decode import read, write_text
from nanolog.reference import read_reference
from nanolog._decode import Record

__all__ = [
    "Logger", "Statistics", "NanologHandler", "read", "read_reference", "write_text", "Record", "LEVELS", "level_name",
    "LogFileError", "EmptyLogError", "NotANanologFile", "UnsupportedVersion",
    "DamagedLogError",
]


def __getattr__(name: str):
    # The same lookup as microrpc.__version__ (see microrpc/__init__.py for why it is lazy
    # and where the version is written); each package asks the distribution itself rather
    # than importing another package for one string.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("microrpc-toolkit")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
