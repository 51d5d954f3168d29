"""Structured JSON logs, one event name per line, carrying the flow ids (requirement N10).

Use ``log = get_logger(__name__)`` then ``log.info("node.register", node_id=..., ...)``.
Never pass tokens, audio or whole payloads.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

FLOW_IDS = ("node_id", "session_id", "job_id", "trace_id", "attempt_id", "conn_id")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class FlowLogger:
    """A thin wrapper: ``log.info(event, **fields)`` writes one JSON line."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, exc_info: bool = False, **fields: Any) -> None:
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        # the record is made here rather than by ``Logger.log``: that one walks the stack for
        # the caller's file and line on every line, which the JSON lines never show
        record = logger.makeRecord(
            logger.name,
            level,
            "(unknown file)",
            0,
            event,
            (),
            sys.exc_info() if exc_info else None,
            extra={"fields": fields},
        )
        logger.handle(record)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info=True, **fields)


def get_logger(name: str) -> FlowLogger:
    return FlowLogger(logging.getLogger(name))


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aio_pika", "aiormq", "websockets", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
