"""``Scripts``: every script on one client and one cell, through the one call path.

``await scripts.select_node(**kw)`` is :func:`lingua_shared.scripts.call.run` of the
``select_node`` module on the client's :class:`TickPipeline` (so the calls of one loop tick
share a round trip); ``scripts.select_node_args(**kw)`` is that module's ``args`` for this
cell, and ``scripts.script(name)`` the loaded script itself (for tests that send raw calls).
Build it with :meth:`Scripts.load` once per process.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts import (
    gap_expire,
    heartbeat_batch,
    heartbeat_with_pool_assign,
    heartbeats_applied,
    job_ack,
    job_create,
    job_finish,
    job_release,
    node_lost,
    node_offline,
    nodes_read,
    nodes_summary,
    outbox_ack,
    outbox_claim,
    pools_summary,
    register_node_v2,
    select_node,
    service_cooldown,
    session_bind,
    slots_reconcile,
    timers_claim,
    utterance_fail,
)
from lingua_shared.scripts.call import Target, run, run_all
from lingua_shared.scripts.loader import (
    ASYNC_CLIENTS,
    Durability,
    TickPipeline,
    bind,
    find_lua_dir,
)

MODULES: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        register_node_v2,
        heartbeat_with_pool_assign,
        node_offline,
        nodes_read,
        nodes_summary,
        pools_summary,
        job_create,
        select_node,
        job_ack,
        job_finish,
        job_release,
        gap_expire,
        timers_claim,
        service_cooldown,
        utterance_fail,
        outbox_ack,
        outbox_claim,
        session_bind,
        node_lost,
        slots_reconcile,
        heartbeats_applied,
        heartbeat_batch,
    )
}


def _builder(module: ModuleType) -> Any:
    """``Scripts.<name>_args``: the module's ``args`` for this cell, with its signature."""

    def build(self: Scripts, **kw: Any) -> tuple[list[str], list[Any]]:
        return module.args(self.keys, **kw)  # type: ignore[no-any-return]

    sig = inspect.signature(module.args)
    params = list(sig.parameters.values())[1:]  # without ``keys``
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    build.__signature__ = sig.replace(parameters=[self_param, *params])  # type: ignore[attr-defined]
    build.__name__ = f"{module.NAME}_args"
    build.__doc__ = f"KEYS and ARGV of ``{module.NAME}.lua`` (``{module.__name__}.args``)."
    return build


class Scripts:
    """Every script, typed, on one client and one cell."""

    NAMES = tuple(MODULES)

    def __init__(
        self, redis: Redis, keys: Keys, lua_dir: Path, wait: Durability | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.lua_dir = lua_dir
        self.wait = wait  # WAIT after each round trip of calls (LINGUA_REDIS_WAIT_REPLICAS)
        self._binding = bind(redis, lua_dir)
        for name in self.NAMES:  # read every file now: a missing one fails here
            self._binding.script(name)
        # an asyncio client shares round trips within a loop tick; a synchronous one (the
        # stateful models in shared/tests) only builds arguments and sends raw calls
        self.pipeline = TickPipeline(redis, wait=wait) if isinstance(redis, ASYNC_CLIENTS) else None

    @classmethod
    async def load(
        cls, redis: Redis, keys: Keys, lua_dir: str | None = None, wait: Durability | None = None
    ) -> Scripts:
        """Read every script and load it into Redis now, so a broken script fails start-up."""
        self = cls(redis, keys, find_lua_dir(lua_dir), wait)
        for name in cls.NAMES:
            await redis.script_load(self.script(name).script)
        return self

    def for_cell(self, keys: Keys) -> Scripts:
        """The same scripts, client and round trips, on another cell's keys."""
        if keys == self.keys:
            return self
        view = copy.copy(self)
        view.keys = keys
        return view

    def script(self, name: str) -> Any:
        """The loaded script (``CachedScript``; redis-py's ``Script`` on a sync client)."""
        if name not in MODULES:
            raise KeyError(name)
        return self._binding.script(name)

    @property
    def target(self) -> Target:
        return self.pipeline if self.pipeline is not None else self.redis

    async def run(self, module: ModuleType, **kw: Any) -> Any:
        return await run(module, self.target, keys=self.keys, **kw)

    async def run_all(
        self, module: ModuleType, calls: Iterable[dict[str, Any]], **kw: Any
    ) -> list[Any]:
        """Many calls of one script in one round trip of their own (see ``call.run_all``)."""
        return await run_all(module, self.redis, calls, keys=self.keys, wait=self.wait, **kw)

    # -- builders, one per script (the contract test looks them up by name); they come before
    # the calls below, which take the modules' names in this class body
    register_node_v2_args = _builder(register_node_v2)
    heartbeat_with_pool_assign_args = _builder(heartbeat_with_pool_assign)
    heartbeat_args = heartbeat_with_pool_assign_args
    node_offline_args = _builder(node_offline)
    nodes_read_args = _builder(nodes_read)
    nodes_summary_args = _builder(nodes_summary)
    pools_summary_args = _builder(pools_summary)
    job_create_args = _builder(job_create)
    select_node_args = _builder(select_node)
    job_ack_args = _builder(job_ack)
    job_finish_args = _builder(job_finish)
    job_release_args = _builder(job_release)
    gap_expire_args = _builder(gap_expire)
    timers_claim_args = _builder(timers_claim)
    service_cooldown_args = _builder(service_cooldown)
    utterance_fail_args = _builder(utterance_fail)
    outbox_ack_args = _builder(outbox_ack)
    outbox_claim_args = _builder(outbox_claim)
    session_bind_args = _builder(session_bind)
    node_lost_args = _builder(node_lost)
    slots_reconcile_args = _builder(slots_reconcile)
    heartbeats_applied_args = _builder(heartbeats_applied)
    heartbeat_batch_args = _builder(heartbeat_batch)

    # -- calls, one per script ------------------------------------------------------------------
    async def register_node_v2(self, **kw: Any) -> register_node_v2.RegisterResult:
        return await self.run(register_node_v2, **kw)  # type: ignore[no-any-return]

    async def heartbeat_with_pool_assign(
        self, **kw: Any
    ) -> heartbeat_with_pool_assign.HeartbeatResult:
        return await self.run(heartbeat_with_pool_assign, **kw)  # type: ignore[no-any-return]

    async def node_offline(self, **kw: Any) -> node_offline.OfflineResult:
        return await self.run(node_offline, **kw)  # type: ignore[no-any-return]

    async def nodes_read(self, **kw: Any) -> list[list[Any]]:
        return await self.run(nodes_read, **kw)  # type: ignore[no-any-return]

    async def nodes_summary(self, **kw: Any) -> nodes_summary.NodesSummary:
        return await self.run(nodes_summary, **kw)  # type: ignore[no-any-return]

    async def pools_summary(self, **kw: Any) -> list[pools_summary.ShardSummary]:
        return await self.run(pools_summary, **kw)  # type: ignore[no-any-return]

    async def job_create(self, **kw: Any) -> job_create.Created:
        return await self.run(job_create, **kw)  # type: ignore[no-any-return]

    async def select_node(self, **kw: Any) -> select_node.Selection:
        return await self.run(select_node, **kw)  # type: ignore[no-any-return]

    async def job_ack(self, **kw: Any) -> job_ack.Ack:
        return await self.run(job_ack, **kw)  # type: ignore[no-any-return]

    async def job_finish(self, **kw: Any) -> job_finish.Result:
        return await self.run(job_finish, **kw)  # type: ignore[no-any-return]

    async def job_release(self, **kw: Any) -> job_release.Release:
        return await self.run(job_release, **kw)  # type: ignore[no-any-return]

    async def gap_expire(self, **kw: Any) -> gap_expire.Result:
        return await self.run(gap_expire, **kw)  # type: ignore[no-any-return]

    async def timers_claim(self, **kw: Any) -> list[str]:
        return await self.run(timers_claim, **kw)  # type: ignore[no-any-return]

    async def service_cooldown(self, **kw: Any) -> service_cooldown.Cooldown:
        return await self.run(service_cooldown, **kw)  # type: ignore[no-any-return]

    async def utterance_fail(self, **kw: Any) -> utterance_fail.Result:
        return await self.run(utterance_fail, **kw)  # type: ignore[no-any-return]

    async def outbox_ack(self, **kw: Any) -> outbox_ack.Result:
        return await self.run(outbox_ack, **kw)  # type: ignore[no-any-return]

    async def outbox_claim(self, **kw: Any) -> outbox_claim.Result:
        return await self.run(outbox_claim, **kw)  # type: ignore[no-any-return]

    async def session_bind(self, **kw: Any) -> session_bind.Result:
        return await self.run(session_bind, **kw)  # type: ignore[no-any-return]

    async def node_lost(self, **kw: Any) -> node_lost.Result:
        return await self.run(node_lost, **kw)  # type: ignore[no-any-return]

    async def slots_reconcile(self, **kw: Any) -> slots_reconcile.Result:
        return await self.run(slots_reconcile, **kw)  # type: ignore[no-any-return]

    async def heartbeats_applied(self, **kw: Any) -> heartbeats_applied.Result:
        return await self.run(heartbeats_applied, **kw)  # type: ignore[no-any-return]

    async def heartbeat_batch(self, **kw: Any) -> heartbeat_batch.Result:
        return await self.run(heartbeat_batch, **kw)  # type: ignore[no-any-return]
