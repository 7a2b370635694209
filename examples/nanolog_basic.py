"""Log with nanolog, then read the binary log back, from Python and with the CLI.

    python examples/nanolog_basic.py
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import nanolog


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.nlog"
        with nanolog.Logger(path) as log:              # appends if the file exists
            for i in range(5):
                log.info("request %d from %s took %.1f us", i, "10.0.0.7", 12.5 * (i + 1))
            log.warning("cache miss rate %.2f", 0.25)

        # Decode from Python: records with their time, level and formatted message.
        for rec in nanolog.read(path):
            print(rec.level_name, rec.message)

        # Or with the command-line decoder (the same as running `nanolog decode app.nlog`).
        out = subprocess.run([sys.executable, "-m", "nanolog.cli", "decode", str(path)],
                             capture_output=True, text=True, check=True)
        print(f"`nanolog decode` printed {len(out.stdout.splitlines())} lines")


if __name__ == "__main__":
    main()
