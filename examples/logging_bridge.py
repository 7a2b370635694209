"""Send existing stdlib ``logging`` calls to a nanolog file with ``nanolog.NanologHandler``.

    python examples/logging_bridge.py
"""
import logging
import tempfile
from pathlib import Path

import nanolog


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.nlog"
        handler = nanolog.NanologHandler(path)          # opens (and owns) a nanolog Logger
        log = logging.getLogger("app.db")
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        log.propagate = False
        try:
            log.info("query %s took %d ms", "SELECT 1", 3)
            log.warning("slow query: %d ms", 250)
            try:
                1 / 0
            except ZeroDivisionError:
                log.exception("failed to compute a ratio")
        finally:
            log.removeHandler(handler)
            handler.close()
        for rec in nanolog.read(path):
            print(rec.message.splitlines()[0])


if __name__ == "__main__":
    main()
