"""Optional JSON-lines logging on stderr for the CLI.

The CLI's stdout is its product (result lines or ``--json`` events that scripts parse), so
diagnostics never go there; and by default there are none at all, since a person streaming
a file wants the results, not the handshake. ``--log-level debug`` turns on one JSON object
per log record on stderr, with the record's ``extra`` fields (session id, utterance index,
latency) as keys, so a slow utterance can be matched with the gateway's own flow logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("quiet", "debug", "info", "warning", "error")
_BUILTIN = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _BUILTIN})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "quiet") -> None:
    """``quiet``: nothing at all (not even Python's last-resort warnings); else JSON lines."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    root = logging.getLogger()
    if level == "quiet":
        root.handlers[:] = [logging.NullHandler()]
        root.setLevel(logging.CRITICAL + 1)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if root.level > logging.DEBUG:  # websockets is chatty below WARNING
        logging.getLogger("websockets").setLevel(logging.WARNING)
