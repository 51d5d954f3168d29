"""JSON-lines logging to stderr, every line carrying the ``node_id`` it concerns.

Flow logs must let an operator follow one node across services (requirement N10), and with a
simulator one process speaks for thousands of nodes, so the node id is a field of every
record rather than a property of the process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "info") -> None:
    """Send every ``lingua_node_agent`` (and ``websockets``) record to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(parse_level(level))
    # websockets logs every handshake failure with a traceback at INFO/DEBUG; keep it quiet
    # unless the operator asked for debug output.
    if root.level > logging.DEBUG:
        logging.getLogger("websockets").setLevel(logging.WARNING)


def parse_level(level: str) -> int:
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


class NodeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds the *current* node id to each record (it changes when the first ack arrives)."""

    def __init__(self, logger: logging.Logger, node_id: Callable[[], str | None]) -> None:
        super().__init__(logger, {})
        self._node_id = node_id

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("node_id", self._node_id())
        kwargs["extra"] = extra
        return msg, kwargs
