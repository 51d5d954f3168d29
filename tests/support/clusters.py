"""A local Redis Cluster for a test module, and a flushed cluster client for each test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from redis.asyncio import Redis

from lingua_shared.devcluster import LocalCluster
from lingua_shared.testing import redis_for_tests


@contextlib.contextmanager
def local_cluster(base: Path, replicas: int) -> Iterator[LocalCluster]:
    """Three masters with ``replicas`` replicas each, real processes, stopped by PID."""
    c = LocalCluster(base, replicas=replicas).start()
    try:
        yield c
    finally:
        c.stop()


@contextlib.asynccontextmanager
async def flushed_client(cluster: LocalCluster) -> AsyncIterator[Redis]:
    """A cluster client on an emptied cluster."""
    client = redis_for_tests(cluster.url, cluster=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
