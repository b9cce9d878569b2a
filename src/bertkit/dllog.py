"""NVIDIA dllogger's JSON stream, which the seed's `--dllog_path` writes and NVIDIA's and Habana's
tooling parse: one record per line, `DLLL ` then a JSON object

    DLLL {"timestamp": "1700000000.123", "datetime": "2023-11-14 22:13:20.123000",
          "elapsedtime": "0.5", "type": "LOG", "step": 10, "data": {"loss": 7.1}}

as dllogger's JSONStreamBackend writes it (timestamp, datetime and elapsedtime are strings; type is
LOG). The run's settings come first, once, with step "PARAMETER", as NVIDIA's BERT scripts log them;
the final summary has step [] (their `step=()`). bertkit's own log.jsonl is written as well.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

PREFIX = "DLLL "


class DLLog:
    """Append dllogger records to `path` (created afresh, as dllogger's default `append=False`)."""

    def __init__(self, path: str | os.PathLike, parameters: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start = datetime.now()
        self.file = open(self.path, "w", buffering=1)
        self.log("PARAMETER", {k: v for k, v in parameters.items() if _plain(v)})

    def log(self, step: int | str | tuple, data: dict) -> None:
        now = datetime.now()
        record = {"timestamp": str(now.timestamp()), "datetime": str(now),
                  "elapsedtime": str((now - self.start).total_seconds()), "type": "LOG",
                  "step": list(step) if isinstance(step, tuple) else step, "data": data}
        try:
            self.file.write(PREFIX + json.dumps(record) + "\n")
        except OSError as e:  # name the file (a write to a full disk has no file name)
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        self.file.close()


def _plain(value) -> bool:
    """JSON's own values only: settings that are paths or objects would not read back the same."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))
