"""The Lua loader and one typed wrapper per script (``<name>.lua`` <-> ``Scripts.<name>``).

Scripts are read from ``lua/`` at start-up (fail fast), with ``--@include <lib>`` lines
replaced by ``lua/lib/<lib>.lua``, and run as :class:`CachedScript` (EVALSHA, and on NOSCRIPT
one EVAL of the source, so a Redis restart or ``SCRIPT FLUSH`` never reaches a caller).
Expected outcomes come back as ``[code, ...]`` with negative codes mapped by
:class:`ScriptCode`; a script's header lists them and ``shared/tests/test_script_contract.py``
checks each header against the wrapper here.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from lingua_shared.errors import NodeNotRegistered, ScriptRejected
from lingua_shared.job_scripts import JOB_SCRIPT_NAMES, JobScriptsMixin
from lingua_shared.keys import Keys

INCLUDE_RE = re.compile(r"^--@include\s+(\w+)\s*$", re.MULTILINE)


def find_lua_dir(explicit: str | None = None) -> Path:
    """``explicit`` (``LINGUA_LUA_DIR``), else the repository's ``lua/`` above this file."""
    if explicit:
        path = Path(explicit)
        if not (path / "register_node_v2.lua").is_file():
            raise FileNotFoundError(f"LINGUA_LUA_DIR={explicit} holds no register_node_v2.lua")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "lua"
        if (candidate / "register_node_v2.lua").is_file():
            return candidate
    raise FileNotFoundError("no lua/ directory found; set LINGUA_LUA_DIR")


def load_source(lua_dir: Path, name: str) -> str:
    text = (lua_dir / f"{name}.lua").read_text()

    def include(m: re.Match[str]) -> str:
        return (lua_dir / "lib" / f"{m.group(1)}.lua").read_text()

    return INCLUDE_RE.sub(include, text)


class CachedScript(AsyncScript):
    """EVALSHA; on NOSCRIPT, EVAL with the source.

    redis-py's own fallback (SCRIPT LOAD, then EVALSHA again) loses a race with a
    ``SCRIPT FLUSH`` or a restart between its two calls, and the NOSCRIPT then reaches the
    caller (the fault suite's S3 saw 200 of ~12,000 calls fail that way with a flush every
    20 ms). EVAL compiles and runs in one command, so it cannot lose that race, and it caches
    the script again for the next EVALSHA. Pipelines keep redis-py's path: ``execute()``
    loads their scripts first."""

    async def __call__(self, keys=None, args=None, client=None):  # type: ignore[no-untyped-def]
        keys = list(keys or [])
        client = client if client is not None else self.registered_client
        if isinstance(client, Pipeline):
            return await super().__call__(keys, args, client)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *(args or []))
        except NoScriptError:
            return await client.eval(self.script, len(keys), *keys, *(args or []))


class TickPipeline:
    """Script calls made in the same event-loop tick go to Redis as one pipelined round trip.

    A dispatcher handles many deliveries at once under load; each would otherwise take a pooled
    connection and pay a write, a wake-up and a read for one EVALSHA. Here the calls of one
    tick are written together (``transaction=False``: each script is still atomic, others'
    commands may run between them, exactly as with separate calls) and each caller gets its
    own reply or its own error. One call in a tick goes alone, the way it did before, so an
    idle system pays nothing for this. NOSCRIPT (a Redis restart, ``SCRIPT FLUSH``) falls back
    to :class:`CachedScript`'s EVAL for the calls it hit."""

    def __init__(self, redis: Redis, max_calls: int = 256) -> None:
        self.redis = redis
        self.max_calls = max_calls
        self._calls: list[tuple[CachedScript, list[Any], list[Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        self.calls = 0

    async def call(self, script: CachedScript, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._calls:
            loop.call_soon(self._flush)
        self._calls.append((script, keys, args, fut))
        if len(self._calls) >= self.max_calls:
            self._flush()
        return await fut

    def _flush(self) -> None:
        calls, self._calls = self._calls, []
        if not calls:
            return
        task = asyncio.get_running_loop().create_task(self._send(calls))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, calls: list[tuple[CachedScript, list[Any], list[Any], asyncio.Future[Any]]]
    ) -> None:
        self.round_trips += 1
        self.calls += len(calls)
        try:
            if len(calls) == 1:
                script, keys, args, _ = calls[0]
                replies: list[Any] = [await _reply_or_error(script, keys, args)]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for script, keys, args, _ in calls:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    replies = await pipe.execute(raise_on_error=False)
                await rerun_noscript(replies, [(sc, k, a) for sc, k, a, _ in calls])
        except BaseException as exc:
            for *_, fut in calls:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, fut), reply in zip(calls, replies, strict=True):
            if fut.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)


async def _reply_or_error(script: CachedScript, keys: list[Any], args: list[Any]) -> Any:
    try:
        return await script(keys=keys, args=args)
    except Exception as exc:
        return exc


async def rerun_noscript(
    replies: list[Any], calls: list[tuple[CachedScript, list[Any], list[Any]]]
) -> None:
    """Run again, alone, each pipelined call that met an emptied script cache (NOSCRIPT
    between the pipeline's script load and its EVALSHAs); :class:`CachedScript` falls back to
    EVAL. ``replies[i]`` becomes that call's reply or error."""
    for i, (script, keys, args) in enumerate(calls):
        if isinstance(replies[i], NoScriptError):
            replies[i] = await _reply_or_error(script, keys, args)


class ScriptCode(IntEnum):
    """Negative outcome codes of register/heartbeat (see each header); -1 is shared by all."""

    INVALID_INPUT = -1
    NOT_REGISTERED = -2  # heartbeat: no live node key
    STALE = -3  # heartbeat: this connection was already reported dropped
    NO_NODE = -4  # select_node: no eligible node with a free slot
    STALE_JOB = -5  # job scripts: another attempt or another node, or not in that state
    NO_SUCH_JOB = -6  # job scripts: the job record is gone


class OfflineCode(IntEnum):
    """Outcome codes of ``node_offline``."""

    DONE = 1
    NOTHING_TO_DO = 0
    INVALID_INPUT = -1
    STALE_CONN = -2  # a newer connection owns the node
    NOT_EXPIRED = -3  # the node is alive


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class RegisterResult:
    created: bool
    replaced_gateway_id: str
    replaced_conn_id: str


@dataclass(frozen=True)
class HeartbeatResult:
    code: int  # 1 alive, -2 not registered, -3 stale connection
    pools_changed: bool

    @property
    def alive(self) -> bool:
        return self.code == 1


@dataclass(frozen=True)
class OfflineResult:
    code: int  # 1 done, 0 nothing to do, -2 stale connection, -3 not expired
    pools_removed: int


@dataclass(frozen=True)
class NodesSummary:
    """``nodes_summary``: totals over a batch of node records (see the script's header)."""

    alive: int
    schedulable: int
    capacity: int
    running: int
    reserved: int
    by_region: dict[str, int]
    by_gpu_tier: dict[str, int]
    unschedulable: list[str]


@dataclass(frozen=True)
class ShardSummary:
    """``pools_summary``: one pool shard's members and load."""

    members: int
    schedulable: int
    capacity: int
    running: int
    reserved: int


def _flat_counts(raw: list[Any]) -> dict[str, int]:
    return {_s(raw[i]): int(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}


class NodesReadMixin:
    """Display reads of many records per round trip (the stats snapshot), never scheduling:
    ``nodes_read`` returns fields, ``nodes_summary`` and ``pools_summary`` return totals
    summed inside Redis."""

    keys: Keys

    def nodes_summary_args(self, *, node_ids: list[str]) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [json.dumps(node_ids)]

    def parse_nodes_summary(self, reply: list[Any]) -> NodesSummary:
        if int(reply[0]) == ScriptCode.INVALID_INPUT:
            raise ScriptRejected(f"nodes_summary: invalid {_s(reply[1])}", {"field": _s(reply[1])})
        _, alive, sched, cap, run, res, regions, tiers, unsched = reply
        return NodesSummary(
            alive=int(alive),
            schedulable=int(sched),
            capacity=int(cap),
            running=int(run),
            reserved=int(res),
            by_region=_flat_counts(regions),
            by_gpu_tier=_flat_counts(tiers),
            unschedulable=[_s(n) for n in unsched],
        )

    def pools_summary_args(self, *, shard_ids: list[str]) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [json.dumps(shard_ids)]

    def parse_pools_summary(self, reply: list[Any]) -> list[ShardSummary]:
        if int(reply[0]) == ScriptCode.INVALID_INPUT:
            raise ScriptRejected(f"pools_summary: invalid {_s(reply[1])}", {"field": _s(reply[1])})
        return [ShardSummary(*(int(v) for v in entry)) for entry in reply[1:]]

    def nodes_read_args(
        self, *, field_names: list[str], node_ids: list[str]
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [json.dumps(field_names), json.dumps(node_ids)]

    def parse_nodes_read(self, reply: list[Any]) -> list[list[Any]]:
        if reply and isinstance(reply[0], int):
            if int(reply[0]) == ScriptCode.INVALID_INPUT:
                raise ScriptRejected(f"nodes_read: invalid {_s(reply[1])}", {"field": _s(reply[1])})
        return reply


class Scripts(JobScriptsMixin, NodesReadMixin):
    """Typed wrappers; build with :meth:`load` once per process."""

    NAMES = (
        "register_node_v2",
        "heartbeat_with_pool_assign",
        "node_offline",
        "nodes_read",
        "nodes_summary",
        "pools_summary",
        *JOB_SCRIPT_NAMES,
    )

    def __init__(self, redis: Redis, keys: Keys, lua_dir: Path) -> None:
        self.redis = redis
        self.keys = keys
        self.lua_dir = lua_dir
        self._scripts: dict[str, AsyncScript] = {
            name: self._make(redis, load_source(lua_dir, name)) for name in self.NAMES
        }
        # job scripts (the dispatcher's hot path) share round trips within a loop tick
        self.pipeline = TickPipeline(redis) if isinstance(redis, Redis) else None

    @staticmethod
    def _make(redis: Redis, source: str) -> AsyncScript:
        # a synchronous client (the stateful model in shared/tests) keeps redis-py's Script
        if isinstance(redis, Redis):
            return CachedScript(redis, source)
        return redis.register_script(source)  # type: ignore[return-value]

    @classmethod
    async def load(cls, redis: Redis, keys: Keys, lua_dir: str | None = None) -> Scripts:
        """Read every script and load it into Redis now, so a broken script fails start-up."""
        self = cls(redis, keys, find_lua_dir(lua_dir))
        for script in self._scripts.values():
            await redis.script_load(script.script)
        return self

    def script(self, name: str) -> AsyncScript:
        return self._scripts[name]

    async def nodes_read(self, **kw: Any) -> list[list[Any]]:
        keys, args = self.nodes_read_args(**kw)
        return self.parse_nodes_read(await self._scripts["nodes_read"](keys=keys, args=args))

    async def nodes_summary(self, **kw: Any) -> NodesSummary:
        keys, args = self.nodes_summary_args(**kw)
        return self.parse_nodes_summary(await self._scripts["nodes_summary"](keys=keys, args=args))

    async def pools_summary(self, **kw: Any) -> list[ShardSummary]:
        keys, args = self.pools_summary_args(**kw)
        return self.parse_pools_summary(await self._scripts["pools_summary"](keys=keys, args=args))

    @staticmethod
    def _check_invalid(name: str, reply: list[Any]) -> None:
        if int(reply[0]) == ScriptCode.INVALID_INPUT:
            raise ScriptRejected(f"{name}: invalid {_s(reply[1])}", {"field": _s(reply[1])})

    # -- register_node_v2 ---------------------------------------------------------------
    def register_node_v2_args(
        self,
        *,
        node_id: str,
        now_ms: int,
        ttl_ms: int,
        region: str,
        gpu_tier: str,
        lang_sets: list[list[str]],
        capacity: int,
        services: dict[str, list[str]],
        gateway_id: str,
        conn_id: str,
        meta: dict[str, Any] | None = None,
        acks: bool = True,
        public: bool = True,
        tenant: str = "",
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.node(node_id), k.nodes_all, k.nodes_expiry, k.nodes_connected]
        args = [
            node_id,
            now_ms,
            ttl_ms,
            region,
            gpu_tier,
            json.dumps(lang_sets),
            capacity,
            json.dumps(services),
            gateway_id,
            conn_id,
            json.dumps(meta or {}),
            int(acks),
            int(public),
            tenant,
        ]
        return keys, args

    async def register_node_v2(self, **kw: Any) -> RegisterResult:
        keys, args = self.register_node_v2_args(**kw)
        reply = await self._scripts["register_node_v2"](keys=keys, args=args)
        return self.parse_register(reply)

    def parse_register(self, reply: list[Any]) -> RegisterResult:
        self._check_invalid("register_node_v2", reply)
        return RegisterResult(int(reply[0]) == 1, _s(reply[1]), _s(reply[2]))

    # -- heartbeat_with_pool_assign ------------------------------------------------------
    def heartbeat_args(
        self,
        *,
        node_id: str,
        conn_id: str,
        gateway_id: str,
        now_ms: int,
        ttl_ms: int = 0,
        running_jobs: int | None = None,
        cpu_percent: float | None = None,
        gpu_percent: float | None = None,
        mem_percent: float | None = None,
        max_shard_size: int = 256,
        status: str | None = None,
        lang_sets: list[list[str]] | None = None,
        services: dict[str, list[str]] | None = None,
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [
            k.node(node_id),
            k.node_pools(node_id),
            k.nodes_expiry,
            k.nodes_connected,
            k.prefix,
        ]

        def num(v: float | None) -> float:
            return -1 if v is None else v

        args = [
            node_id,
            conn_id,
            gateway_id,
            now_ms,
            ttl_ms,
            num(running_jobs),
            num(cpu_percent),
            num(gpu_percent),
            num(mem_percent),
            max_shard_size,
            status or "",
            json.dumps(lang_sets) if lang_sets is not None else "",
            json.dumps(services) if services is not None else "",
        ]
        return keys, args

    # ``<script>_args`` for every script (the contract test looks builders up by name)
    heartbeat_with_pool_assign_args = heartbeat_args

    async def heartbeat_with_pool_assign(self, **kw: Any) -> HeartbeatResult:
        keys, args = self.heartbeat_args(**kw)
        reply = await self._scripts["heartbeat_with_pool_assign"](keys=keys, args=args)
        return self.parse_heartbeat(reply)

    def parse_heartbeat(self, reply: list[Any]) -> HeartbeatResult:
        self._check_invalid("heartbeat_with_pool_assign", reply)
        code = int(reply[0])
        return HeartbeatResult(code, code == 1 and int(reply[1]) == 1)

    # -- node_offline ---------------------------------------------------------------------
    def node_offline_args(
        self, *, node_id: str, mode: str, conn_id: str = "", now_ms: int
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [
            k.node(node_id),
            k.node_pools(node_id),
            k.nodes_all,
            k.nodes_expiry,
            k.nodes_connected,
            k.prefix,
        ]
        return keys, [node_id, mode, conn_id, now_ms]

    async def node_offline(self, **kw: Any) -> OfflineResult:
        keys, args = self.node_offline_args(**kw)
        reply = await self._scripts["node_offline"](keys=keys, args=args)
        return self.parse_offline(reply)

    def parse_offline(self, reply: list[Any]) -> OfflineResult:
        self._check_invalid("node_offline", reply)
        return OfflineResult(int(reply[0]), int(reply[1]))


def require_registered(result: HeartbeatResult, node_id: str) -> None:
    if result.code == ScriptCode.NOT_REGISTERED:
        raise NodeNotRegistered(f"node {node_id} is not registered", {"node_id": node_id})
