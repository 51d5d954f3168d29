"""The one way every process builds its Redis client: a single server, or a Redis Cluster.

With ``LINGUA_REDIS_CLUSTER=true``, ``LINGUA_REDIS_URL`` names any node of the cluster
(``redis://127.0.0.1:7000/0``: a cluster has database 0 only) and the client is redis-py's
cluster client. It discovers the other nodes, sends each command to the master of its key's
slot and follows ``MOVED``/``ASK`` after a failover or a resharding. Every key of a scheduling
cell carries the cell's hash tag, so a cell's keys, scripts, pipelines and transactions all
stay on one slot, and ``SCRIPT LOAD`` goes to every master (the loader reloads a script on
``NOSCRIPT`` too, as after a promoted replica).

The single-server client waits for a free connection when all ``max_connections`` are busy:
a burst queues, instead of failing at once with ``MaxConnectionsError`` (a failed handler's
delivery is requeued, and a burst turned into seconds-long stalls). redis-py's asyncio cluster
client has no such pool: it opens connections to a node as commands need them, without a cap
by default.
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from lingua_shared.settings import Settings

SOCKET_TIMEOUT_S = 5.0


def redis_client(
    url: str,
    *,
    cluster: bool = False,
    max_connections: int | None = None,
    pool_timeout_s: float = 5.0,
    health_check_interval: int = 0,
) -> Redis:
    """A client for ``url``; the caller closes it with ``aclose()``."""
    sockets: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": health_check_interval,
    }
    if cluster:
        # the cluster client answers every command this project sends (one cell, one slot)
        return cast(Redis, RedisCluster.from_url(url, **sockets))
    if max_connections is None:
        return Redis.from_url(url, **sockets)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout_s, **sockets
    )
    return Redis.from_pool(pool)  # closing the client closes its pool


def service_redis(settings: Settings) -> Redis:
    """The client of a service: its settings' URL, mode and pool bounds."""
    return redis_client(
        settings.redis_url,
        cluster=settings.redis_cluster,
        max_connections=settings.redis_max_connections,
        pool_timeout_s=settings.redis_pool_timeout_s,
        health_check_interval=15,
    )
