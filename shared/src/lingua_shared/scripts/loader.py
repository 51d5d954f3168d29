"""Finding, reading and caching the Lua scripts, and sending them to Redis.

Scripts are read from ``lua/`` (``<name>.lua``), with each ``--@include <lib>`` line replaced
by ``lua/lib/<lib>.lua``. A script runs as :class:`CachedScript`: EVALSHA, and on NOSCRIPT
one EVAL of the source, so a Redis restart or ``SCRIPT FLUSH`` never reaches a caller.
:class:`TickPipeline` sends the calls made in one event-loop tick as one pipelined round trip;
:func:`pipelined` sends a list of calls in one round trip; :func:`rerun_noscript` is the
NOSCRIPT fallback of both. :func:`bind` keeps one loaded copy of every
script per client. Calls go through :func:`lingua_shared.scripts.call.run`, never from here.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from lingua_shared.errors import DependencyDown

INCLUDE_RE = re.compile(r"^--@include\s+(\w+)\s*$", re.MULTILINE)
MARKER = "register_node_v2.lua"  # a file every lua/ directory holds
ASYNC_CLIENTS = (Redis, RedisCluster)  # a single server, or a Redis Cluster (redisconn)


@dataclass(frozen=True)
class Durability:
    """``WAIT replicas timeout_ms`` after each round trip of script calls, on the connection
    (and the node) that ran them: a call is answered only once that many replicas hold its
    writes, so a failover to one of them loses none of them (``LINGUA_REDIS_WAIT_REPLICAS``)."""

    replicas: int
    timeout_ms: int


class ReplicasBehind(DependencyDown):
    """The scripts ran, but fewer replicas than required confirmed their writes within the
    timeout: nothing is acknowledged (a bus delivery is retried in place; every script is
    replay-safe)."""


def find_lua_dir(explicit: str | Path | None = None) -> Path:
    """``explicit`` (``LINGUA_LUA_DIR``), else the repository's ``lua/`` above this file."""
    if explicit:
        path = Path(explicit)
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"LINGUA_LUA_DIR={explicit} holds no {MARKER}")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "lua"
        if (candidate / MARKER).is_file():
            return candidate
    raise FileNotFoundError("no lua/ directory found; set LINGUA_LUA_DIR")


def load_source(lua_dir: Path, name: str) -> str:
    """The text Redis runs: ``<name>.lua`` with its ``--@include`` lines inlined."""
    text = (lua_dir / f"{name}.lua").read_text()

    def include(m: re.Match[str]) -> str:
        return (lua_dir / "lib" / f"{m.group(1)}.lua").read_text()

    return INCLUDE_RE.sub(include, text)


class CachedScript(AsyncScript):
    """EVALSHA; on NOSCRIPT, EVAL with the source.

    redis-py's own fallback (SCRIPT LOAD, then EVALSHA again) can lose a race with a
    ``SCRIPT FLUSH`` or a restart between its two calls, and the NOSCRIPT then reaches the
    caller. EVAL compiles and runs in one command, so it cannot lose that race, and it caches
    the script again for the next EVALSHA. On a redis-py pipeline the call keeps redis-py's
    path: ``execute()`` loads the pipeline's scripts first."""

    async def __call__(self, keys=None, args=None, client=None):  # type: ignore[no-untyped-def]
        keys = list(keys or [])
        client = client if client is not None else self.registered_client
        if isinstance(client, ClusterPipeline):
            # redis-py's cluster pipeline refuses evalsha(): queue the command itself (the
            # script is loaded on every master at start-up; a NOSCRIPT after a failover comes
            # back as that call's error, and pipelined() runs it again alone)
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *(args or []))
        if isinstance(client, Pipeline):
            return await super().__call__(keys, args, client)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *(args or []))
        except NoScriptError:
            return await client.eval(self.script, len(keys), *keys, *(args or []))


class _Binding:
    def __init__(self, client: Any, lua_dir: Path) -> None:
        self.client = client
        self.lua_dir = lua_dir
        self.scripts: dict[str, Any] = {}

    def script(self, name: str) -> Any:
        script = self.scripts.get(name)
        if script is None:
            source = load_source(self.lua_dir, name)
            if isinstance(self.client, ASYNC_CLIENTS):
                script = CachedScript(self.client, source)
            else:  # a synchronous client keeps redis-py's Script
                script = self.client.register_script(source)
            self.scripts[name] = script
        return script


_BINDINGS: weakref.WeakKeyDictionary[Any, _Binding] = weakref.WeakKeyDictionary()


def bind(client: Any, lua_dir: Path | None = None) -> _Binding:
    """The scripts of ``lua_dir`` (default: :func:`find_lua_dir`) on ``client``: a
    :class:`CachedScript` each on an asyncio client, redis-py's ``Script`` on a synchronous
    one. Made once per client and directory; binding another directory replaces the first."""
    binding = _BINDINGS.get(client)
    if binding is None or (lua_dir is not None and binding.lua_dir != lua_dir):
        binding = _Binding(client, lua_dir or find_lua_dir())
        _BINDINGS[client] = binding
    return binding


Call = tuple[CachedScript, list[Any], list[Any]]


class TickPipeline:
    """Script calls made in the same event-loop tick go to Redis as one pipelined round trip.

    Each call would otherwise take a pooled connection and pay a write, a wake-up and a read
    for one EVALSHA. Here the calls of one tick are written together (``transaction=False``:
    each script is still atomic, others' commands may run between them, exactly as with
    separate calls) and each caller gets its own reply or its own error. One call in a tick
    goes alone, so an idle system pays nothing for this. NOSCRIPT (a Redis restart,
    ``SCRIPT FLUSH``) falls back to :class:`CachedScript`'s EVAL for the calls it hit."""

    def __init__(self, redis: Redis, max_calls: int = 256, wait: Durability | None = None) -> None:
        self.redis = redis
        self.max_calls = max_calls
        self.wait = wait  # a lone call goes pipelined too then: its WAIT must share its connection
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
            if len(calls) == 1 and self.wait is None:
                script, keys, args, _ = calls[0]
                replies: list[Any] = [await _reply_or_error(script, keys, args)]
            else:
                replies = await pipelined(
                    self.redis, [(sc, k, a) for sc, k, a, _ in calls], self.wait
                )
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


async def pipelined(redis: Redis, calls: list[Call], wait: Durability | None = None) -> list[Any]:
    """``calls`` in one pipelined round trip (``transaction=False``: each script atomic, as
    with separate calls); each call's reply or its error, in order. NOSCRIPT is run again
    alone (:func:`rerun_noscript`); a lost connection raises. With ``wait``, a ``WAIT``
    follows the calls on the same connection, and :class:`ReplicasBehind` is raised for them
    all when too few replicas confirmed their writes."""
    where: dict[str, Any] = {}
    if wait is not None and isinstance(redis, RedisCluster) and calls and calls[0][1]:
        await redis.initialize()  # (a no-op once the client knows the slots)
        # the master of the calls' slot (one cell, one slot): WAIT has no key to route by
        where["target_nodes"] = redis.get_node_from_key(calls[0][1][0])
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            # as a plain command: redis-py's cluster pipeline refuses its evalsha() method,
            # but routes an EVALSHA command by its keys like any other
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        if wait is not None:
            pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms, **where)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    if wait is not None:
        acked = replies.pop()
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < wait.replicas:
            raise ReplicasBehind(
                f"{acked} of {wait.replicas} replicas confirmed the writes within "
                f"{wait.timeout_ms} ms"
            )
    await rerun_noscript(replies, calls)
    return replies


async def rerun_noscript(replies: list[Any], calls: list[Call]) -> None:
    """Run again, alone, each pipelined call that met an emptied script cache (NOSCRIPT);
    :class:`CachedScript` falls back to EVAL. ``replies[i]`` becomes that call's reply or
    error."""
    for i, (script, keys, args) in enumerate(calls):
        if isinstance(replies[i], NoScriptError):
            replies[i] = await _reply_or_error(script, keys, args)
