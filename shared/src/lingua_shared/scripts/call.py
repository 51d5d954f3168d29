"""The one way to call a script: ``await run(script, target, keys=..., **kw)``.

``script`` is the script's module (``lingua_shared.scripts.select_node``): its ``args(keys,
**kw)`` builds KEYS and ARGV in header order and its ``parse(reply)`` returns the typed
result (raising :class:`ScriptRejected` on invalid input). ``target`` is where it runs:

- an asyncio Redis client: one EVALSHA (EVAL on NOSCRIPT);
- a :class:`TickPipeline`: shares a pipelined round trip with the other calls of the tick.

:func:`run_all` makes many calls of one script in one round trip (node-manager's heartbeat
batches, the sweeper, the stats snapshot) and gives each call its own result or error;
:func:`run_sync` is :func:`run` on a synchronous client (Celery workers, stateful tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.scripts.loader import Durability, TickPipeline, bind, pipelined

Target = Redis | TickPipeline


def client_of(target: Any) -> Any:
    return target.redis if isinstance(target, TickPipeline) else target


async def run(script: ModuleType, target: Target, /, *, keys: Keys, **kw: Any) -> Any:
    """Call ``script`` with ``kw`` (its header's ARGV names) on ``target``; its parsed
    result."""
    keys_, argv = script.args(keys, **kw)
    loaded = bind(client_of(target)).script(script.NAME)
    if isinstance(target, TickPipeline):
        reply = await target.call(loaded, keys_, argv)
    else:
        reply = await loaded(keys=keys_, args=argv)
    return script.parse(reply)


async def run_all(
    script: ModuleType,
    target: Target,
    calls: Iterable[dict[str, Any]],
    /,
    *,
    keys: Keys,
    return_exceptions: bool = True,
    wait: Durability | None = None,
) -> list[Any]:
    """Every call of ``calls`` (each the ``kw`` of :func:`run`) in one pipelined round trip
    of its own, results in order. Each call is atomic on its own (no transaction). With
    ``return_exceptions`` a call's error (``ScriptRejected``, a Redis error) takes its place
    in the list; otherwise the first one is raised. A lost connection always raises."""
    prepared = [script.args(keys, **kw) for kw in calls]
    if not prepared:
        return []
    loaded = bind(client_of(target)).script(script.NAME)
    replies = await pipelined(client_of(target), [(loaded, k, a) for k, a in prepared], wait)
    results: list[Any] = []
    for reply in replies:
        if not isinstance(reply, Exception):
            try:
                reply = script.parse(reply)
            except Exception as exc:
                reply = exc
        if isinstance(reply, Exception) and not return_exceptions:
            raise reply
        results.append(reply)
    return results


def run_sync(script: ModuleType, client: Any, /, *, keys: Keys, **kw: Any) -> Any:
    """:func:`run` on a synchronous redis-py client."""
    keys_, argv = script.args(keys, **kw)
    return script.parse(bind(client).script(script.NAME)(keys=keys_, args=argv))
