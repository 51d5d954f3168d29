"""Integration fixtures: the services as real processes against the real Redis and RabbitMQ
(``stack_env`` and the report hook come from ``tests.support.fixtures``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from lingua_shared.devcluster import LocalCluster
from tests.support.clusters import flushed_client
from tests.support.stack import Stack, started_stack


@pytest.fixture
def stack(
    redis, stack_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """node-manager + one gateway (``gw-a``), ready. ``redis`` (flushed) comes first."""
    services = [("nm-1", "node-manager"), ("gw-a", "gateway")]
    with started_stack(stack_env, tmp_path, request, services) as s:
        yield s


@pytest.fixture
async def cluster_redis(cluster: LocalCluster) -> AsyncIterator[Redis]:
    """A client of the emptied local Redis Cluster that the module's ``cluster`` fixture
    started."""
    async with flushed_client(cluster) as client:
        yield client
