"""Integration fixtures: the services as real processes against the real Redis and RabbitMQ
(``stack_env`` and the report hook come from ``tests.support.fixtures``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, started_stack


@pytest.fixture
def stack(
    redis, stack_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """node-manager + one gateway (``gw-a``), ready. ``redis`` (flushed) comes first."""
    services = [("nm-1", "node-manager"), ("gw-a", "gateway")]
    with started_stack(stack_env, tmp_path, request, services) as s:
        yield s
