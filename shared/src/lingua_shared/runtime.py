"""What every service opens at start-up and closes on SIGTERM, in one place.

``Infra.open(settings)`` connects Redis (and loads every Lua script: a broken script fails
start-up), connects RabbitMQ with ``connect_robust(timeout=...)``, declares the topology and
opens a confirming publisher. ``readiness()`` is what ``/readyz`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from lingua_shared.bus import InFlight, Publisher, Topology, connect, declare_topology
from lingua_shared.cells import CellMap
from lingua_shared.errors import DependencyDown
from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger
from lingua_shared.redisconn import service_redis
from lingua_shared.scripts import Durability, Scripts, find_lua_dir
from lingua_shared.settings import Settings

log = get_logger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


SHUTDOWN_STEP_S = 2.0


async def bounded(aw: Awaitable[Any], what: str, timeout: float = SHUTDOWN_STEP_S) -> None:
    """Run one shutdown step with a time limit: a wedged close must not hold the process
    past its grace period (the orchestrator would SIGKILL it and lose the clean exit).

    Not ``asyncio.wait_for``: on timeout it cancels the step and then *waits for the
    cancellation to finish*, which an await that ignores cancellation never does. Here a step
    still running at the deadline is cancelled and left behind."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        log.warning("shutdown.step_timed_out", step=what, timeout_s=timeout)
        return
    if not task.cancelled() and task.exception() is not None:
        log.warning("shutdown.step_failed", step=what, error=repr(task.exception()))


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set: a background loop's wait."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def stop_loops(stop: asyncio.Event, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    """Let background loops end their current round (a sweep, a batch of timers) rather
    than cancel them half-way; those still running after ``timeout`` are cancelled."""
    stop.set()
    if tasks:
        await bounded(asyncio.gather(*tasks, return_exceptions=True), "loops.stop", timeout)


def install_uvloop() -> None:
    """uvloop where available: measurably more throughput wherever Python is CPU-bound."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def check_eviction_policy(redis: Redis, settings: Settings) -> None:
    """Redis is the only truth: it must refuse writes when full rather than evict node records
    or leases (``maxmemory-policy noeviction``). Refused at start-up in production (unless
    ``LINGUA_REDIS_ALLOW_EVICTION``), a warning elsewhere; a managed Redis that forbids
    ``CONFIG`` gets a warning that the policy could not be checked."""
    try:
        reply = await redis.config_get("maxmemory-policy")
    except RedisError as exc:
        log.warning("redis.eviction_policy_unknown", error=repr(exc))
        return
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply.values()]
    policy = values[0] if values else "?"
    if policy == "noeviction":
        return
    message = f"Redis maxmemory-policy is {policy!r}; it must be 'noeviction'"
    if settings.profile == "production" and not settings.redis_allow_eviction:
        raise UnsafeRedisConfig(message)
    log.warning("redis.eviction_policy_unsafe", policy=policy)


class UnknownCell(ValueError):
    """A message names a cell this process does not know (replicas configured with
    different LINGUA_CELLS)."""

    def __init__(self, cell: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown cell {cell[:64]!r} (LINGUA_CELLS here: {', '.join(known)})")
        self.cell = cell


class UnsafeRedisConfig(RuntimeError):
    """Redis is configured so that it could silently lose scheduling state."""


@dataclass
class Infra:
    settings: Settings
    redis: Redis
    scripts: Scripts
    keys: Keys
    topo: Topology
    amqp: AbstractRobustConnection
    publisher: Publisher
    consumers: dict[str, str] = field(default_factory=dict)  # name -> consumer tag
    consume_channels: list[AbstractChannel] = field(default_factory=list)
    inflight: InFlight = field(default_factory=InFlight)  # deliveries being handled
    cell_map: CellMap = field(default_factory=CellMap.single)
    _cells: dict[str, Infra] = field(default_factory=dict, repr=False)

    @property
    def cell(self) -> str:
        return self.keys.cell

    def in_cell(self, cell: str) -> Infra:
        """This infrastructure with another cell's keys and scripts (the same clients,
        publisher and in-flight count); :class:`UnknownCell` for a cell not configured."""
        if cell == self.keys.cell:
            return self
        view = self._cells.get(cell)
        if view is None:
            if not self.cell_map.known(cell):
                raise UnknownCell(cell, self.cell_map.names)
            keys = Keys(cell)
            view = dataclasses.replace(
                self, keys=keys, scripts=self.scripts.for_cell(keys), _cells=self._cells
            )
            self._cells[cell] = view
        return view

    def every_cell(self) -> list[Infra]:
        """One view per configured cell, the default cell's first."""
        return [self.in_cell(c) for c in self.cell_map.ordered]

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Infra]:
        async with contextlib.AsyncExitStack() as stack:
            # one server (a blocking pool: a burst waits for a connection) or a Redis Cluster
            redis = service_redis(settings)
            stack.push_async_callback(bounded, redis.aclose(), "redis.close")
            cell_map = settings.cell_map()
            keys = Keys(cell_map.default)
            lua_dir = find_lua_dir(settings.lua_dir)  # a missing lua/ is not a Redis outage
            try:
                await redis.ping()
            except (OSError, RedisError, RedisClusterException) as exc:
                raise DependencyDown(f"Redis unreachable at {settings.redis_url}: {exc}") from exc
            await check_eviction_policy(redis, settings)
            # A script that does not compile fails start-up with Redis's own message.
            wait = (
                Durability(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
                if settings.redis_wait_replicas
                else None
            )
            scripts = await Scripts.load(redis, keys, str(lua_dir), wait)
            topo = Topology(
                settings.bus_prefix,
                settings.amqp_delivery_limit,
                settings.amqp_work_queue_max_length,
                settings.amqp_queue_type,
            )
            amqp = await connect(
                settings.amqp_url, settings.amqp_connect_timeout_s, settings.amqp_heartbeat_s
            )
            stack.push_async_callback(bounded, amqp.close(), "amqp.close")
            setup = await amqp.channel()
            await declare_topology(setup, topo)
            await setup.close()
            publisher = await Publisher.open(
                amqp,
                topo,
                settings.amqp_confirm_timeout_s,
                settings.amqp_batch_max_items,
                settings.amqp_batch_max_bytes,
            )
            infra = cls(settings, redis, scripts, keys, topo, amqp, publisher, cell_map=cell_map)
            yield infra

    async def consume_channel(self, prefetch: int | None = None) -> AbstractChannel:
        channel = await self.amqp.channel()
        await channel.set_qos(prefetch_count=prefetch or self.settings.amqp_prefetch)
        self.consume_channels.append(channel)
        return channel

    async def stop_consuming(self, queue: AbstractQueue, name: str, timeout: float) -> None:
        """The first step of a drain: take no more deliveries, then let those being handled
        finish and be acked (at most ``timeout`` s). Deliveries the broker sent but no
        handler took, and any still unfinished when the channel closes, stay unacked and go
        back to the queue for another replica: none is lost."""
        tag = self.consumers.pop(name, None)
        if tag:
            await bounded(queue.cancel(tag), f"{name}.cancel")
        busy = self.inflight.count
        if not await self.inflight.wait_idle(timeout):
            log.warning("shutdown.deliveries_unfinished", consumer=name, left=self.inflight.count)
        else:
            log.info("shutdown.deliveries_finished", consumer=name, finished=busy)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        try:
            checks["redis"] = bool(await asyncio.wait_for(self.redis.ping(), 1.0))
        except Exception as exc:
            checks["redis"] = False
            checks["redis_error"] = repr(exc)
        checks["amqp"] = not self.amqp.is_closed and not self.publisher.channel.is_closed
        checks["consumers"] = {
            name: bool(tag) and all(not ch.is_closed for ch in self.consume_channels)
            for name, tag in self.consumers.items()
        }
        ok = checks["redis"] is True and checks["amqp"] and all(checks["consumers"].values())
        return ok, checks


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
