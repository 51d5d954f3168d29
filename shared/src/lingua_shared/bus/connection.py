"""Connecting to RabbitMQ: a robust connection with a bounded start-up and a heartbeat."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from lingua_shared.errors import DependencyDown


def with_heartbeat(url: str, heartbeat_s: int) -> str:
    """``url`` with an AMQP heartbeat, unless it names one itself.

    The broker proposes 60 s and aiormq gives up after (heartbeat + 1) x 3 s of silence, so by
    default a half-open link (a peer gone without a FIN) is noticed after ~3 minutes, and
    until then nothing is consumed. 5 s bounds that at 18 s."""
    parts = urlsplit(url)
    if heartbeat_s <= 0 or "heartbeat" in parse_qs(parts.query):
        return url
    query = f"{parts.query}&heartbeat={heartbeat_s}" if parts.query else f"heartbeat={heartbeat_s}"
    return urlunsplit(parts._replace(query=query))


async def connect(url: str, timeout: float, heartbeat_s: int = 0) -> AbstractRobustConnection:
    """``connect_robust`` with a timeout and a heartbeat, so a half-open link is detected and
    recovered."""
    try:
        return await aio_pika.connect_robust(with_heartbeat(url, heartbeat_s), timeout=timeout)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise DependencyDown(f"RabbitMQ unreachable at startup: {exc!r}") from exc
