"""A ``logging.Handler`` that writes nanolog files from existing stdlib ``logging`` calls.

The stdlib has already spent its microseconds on the ``LogRecord`` by the time a handler
runs; what this saves is the formatting and the per-record write: the record's ``msg``
and ``args`` go into the binary log unformatted, like a direct ``nanolog.Logger`` call.
"""
from __future__ import annotations

import logging
import traceback

from nanolog.logger import Logger

_CACHE_LIMIT = 10_000


class NanologHandler(logging.Handler):
    """Send stdlib log records to a nanolog file.

    ``target`` is a path (the handler opens and owns a ``Logger``) or an existing
    ``nanolog.Logger`` (shared, not closed by the handler). With ``include_name`` the
    stdlib logger's name is part of the format: ``"[app.db] query took %d ms"``.
    Exception and stack information are logged as a second record with the text.
    Times are taken when the handler runs, from nanolog's clock (not ``record.created``),
    which keeps the per-round time order that the decoder relies on.
    """

    def __init__(self, target, level=logging.NOTSET, *, include_name: bool = True,
                 **logger_options):
        super().__init__(level)
        if isinstance(target, Logger):
            if logger_options:
                raise TypeError("logger options apply only when the handler opens the file")
            self.nanolog = target
            self._owns = False
        else:
            self.nanolog = Logger(target, level=0, **logger_options)
            self._owns = True
        self.include_name = include_name
        self._formats: dict = {}

    def _format_for(self, name: str, msg) -> str:
        key = (name, msg) if type(msg) is str else (name, str(msg))
        fmt = self._formats.get(key)
        if fmt is None:
            if len(self._formats) >= _CACHE_LIMIT:
                self._formats.clear()
            fmt = f"[{name.replace('%', '%%')}] {key[1]}"
            self._formats[key] = fmt
        return fmt

    def emit(self, record: logging.LogRecord) -> None:
        try:
            args = record.args
            if not args:
                args = ()
            elif not isinstance(args, tuple):
                args = (args,)  # the single-mapping form: '%(key)s' % mapping
            msg = record.msg
            level = min(max(record.levelno, 0), 255)
            if self.include_name:
                msg = self._format_for(record.name, msg)
                if not args:
                    # A message without arguments is printed verbatim; the name prefix
                    # made '%' special, so undo that for this case.
                    msg = f"[{record.name}] {record.msg}"
            self.nanolog._log_from(level, msg, args, record.pathname, record.lineno or 0)
            extra = []
            if record.exc_info:
                extra.append("".join(traceback.format_exception(*record.exc_info)).rstrip())
            elif record.exc_text:
                extra.append(record.exc_text)
            if record.stack_info:
                extra.append(record.stack_info)
            for text in extra:
                self.nanolog._log_from(level, "%s", (text,), record.pathname, record.lineno or 0)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        if not self.nanolog.closed:
            self.nanolog.flush()

    def close(self) -> None:
        try:
            if self._owns:
                self.nanolog.close()
        finally:
            super().close()
