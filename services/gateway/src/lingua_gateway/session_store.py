"""The session record in Redis: which gateway and connection hold a session (J6), and the
session's outbox.

The dispatcher reads ``gateway_id`` / ``conn_id`` from ``session:<sid>`` to route a
session's answers, and its scripts keep the delivery cursor ``next_deliver`` there. The
gateway writes the record at ``session_init``, refreshes its TTL on activity, and on close
removes only the binding, and only while it is still this connection's (``session_bind``
``unbind``: a session resumed elsewhere keeps its new binding); the cursor and the pool
affinity stay until the TTL, so a job finishing after the close neither resets the order
state nor gets published to anyone.

Every answer stays in the session's outbox until a gateway has written it to the client:
:meth:`SessionStore.written` acknowledges it (``outbox_ack``), batched per session every
``ACK_BATCH_S``. A session resumed on a new connection (``session_init`` with
``resume_session_id``) is bound to it and gets its outbox back (:meth:`SessionStore.resume`).

A session lives in one cell (``placement``): the store is told its cell when it creates or
resumes it, and every later call for that session uses that cell's keys and scripts.

Each write also scores the session in ``sessions:active`` (ZADD now_ms; ZREM on close) in
the same round trip: a display index for the stats snapshot, which counts the members seen
within the session TTL and trims the older ones. Nothing on the job path reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lingua_shared.errors import DependencyDown, ScriptRejected
from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import Binding, ScriptCode

log = get_logger(__name__)
# written answers are acknowledged to their outboxes this often: one pipelined round trip
# for every session's answers of the last half second (an answer is only published again
# ``outbox_retry_ms``, 5 s, after its publish; a close or a resume acknowledges first)
ACK_BATCH_S = 0.5
ACK_RETRY_S = 1.0  # after a failed acknowledgement (Redis down)
MAX_ACK_SESSIONS = 10_000  # beyond this, unacknowledged answers are published again instead
MAX_ACK_INDICES = 1_000  # per outbox_ack call (the script takes at most 1,024)
CURSOR = "next_deliver"


class BindScripts(Protocol):
    """The scripts the store runs (``lingua_shared.scripts.Scripts``)."""

    async def session_bind(self, **kw: Any) -> Binding: ...

    async def outbox_ack(self, **kw: Any) -> Any: ...


class SessionStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        ttl_s: float,
        scripts: BindScripts | None = None,
        gateway_id: str = "",
        in_cell: Callable[[str], tuple[Keys, BindScripts | None]] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.scripts = scripts
        self.gateway_id = gateway_id
        self.in_cell = in_cell  # another cell's keys and scripts (None: one cell)
        self._cells: dict[str, str] = {}  # session id -> its cell, when not the default
        self._acks: dict[str, set[int]] = {}  # session id -> indices written, not yet acked
        self._flusher: asyncio.Task[None] | None = None

    def _at(self, session_id: str, cell: str | None = None) -> tuple[Keys, BindScripts | None]:
        """The keys and scripts of the session's cell."""
        cell = cell or self._cells.get(session_id)
        if cell is None or cell == self.keys.cell or self.in_cell is None:
            return self.keys, self.scripts
        return self.in_cell(cell)

    def _adopt(self, session_id: str, cell: str | None) -> None:
        if cell is not None and cell != self.keys.cell:
            self._cells[session_id] = cell

    async def create(
        self, session_id: str, fields: dict[str, str], cell: str | None = None
    ) -> None:
        """Write the whole record with its TTL in one MULTI; :class:`DependencyDown` if not."""
        keys, _ = self._at(session_id, cell)
        key = keys.session(session_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, self.ttl_ms)
                pipe.zadd(keys.sessions_active, {session_id: now_ms()})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"session store unavailable: {exc}") from exc
        self._adopt(session_id, cell)

    async def touch(self, session_id: str, fields: dict[str, str]) -> bool:
        """Refresh the TTL; restore the record if it is gone (expired, Redis restarted).

        Returns ``True`` when the record had to be restored. Without the record the
        dispatcher could not route this session's answers back to this gateway. A restore
        never moves the delivery cursor back: a script may have written the record again
        meanwhile (releasing answers), and its ``next_deliver`` stands (HSETNX).
        """
        keys, _ = self._at(session_id)
        key = keys.session(session_id)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.pexpire(key, self.ttl_ms)
                pipe.zadd(keys.sessions_active, {session_id: now_ms()})
                refreshed, _ = await pipe.execute()
            if refreshed:
                return False
            rest = {k: v for k, v in fields.items() if k != CURSOR}
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=rest)
                if CURSOR in fields:
                    pipe.hsetnx(key, CURSOR, fields[CURSOR])
                pipe.pexpire(key, self.ttl_ms)
                pipe.zadd(keys.sessions_active, {session_id: now_ms()})
                await pipe.execute()
            return True
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"session store unavailable: {exc}") from exc

    async def resume(
        self, session_id: str, conn_id: str, client: str, cell: str | None = None
    ) -> Binding:
        """Bind an existing session of ``cell`` to this connection (``session_bind resume``);
        once bound, the session's later calls use that cell."""
        _, scripts = self._at(session_id, cell)
        assert scripts is not None
        try:
            binding = await scripts.session_bind(
                session_id=session_id,
                mode="resume",
                gateway_id=self.gateway_id,
                conn_id=conn_id,
                client=client,
                now_ms=now_ms(),
                session_ttl_ms=self.ttl_ms,
            )
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"session store unavailable: {exc}") from exc
        if binding.code == ScriptCode.RESUMED:
            self._adopt(session_id, cell)
        return binding

    async def unbind(self, session_id: str, conn_id: str) -> None:
        """Remove the binding if it is still this connection's (HDEL never recreates an
        expired record); what it has written is acknowledged first."""
        await self.flush_acks()
        keys, scripts = self._at(session_id)
        try:
            if scripts is None:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hdel(keys.session(session_id), "gateway_id", "conn_id")
                    pipe.zrem(keys.sessions_active, session_id)
                    await pipe.execute()
                return
            await scripts.session_bind(
                session_id=session_id,
                mode="unbind",
                gateway_id=self.gateway_id,
                conn_id=conn_id,
                client="",
                now_ms=now_ms(),
                session_ttl_ms=self.ttl_ms,
            )
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"session store unavailable: {exc}") from exc
        finally:
            if session_id not in self._acks:
                self._cells.pop(session_id, None)

    # -- the outbox ------------------------------------------------------------------------
    def written(self, session_id: str, index: int) -> None:
        """The answer to ``index`` was written to the client: acknowledge it (batched)."""
        if self.scripts is None:
            return
        if session_id not in self._acks and len(self._acks) >= MAX_ACK_SESSIONS:
            return  # left in the outbox: published again, dropped here as a duplicate
        self._acks.setdefault(session_id, set()).add(index)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(ACK_BATCH_S))

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not await self.flush_acks():
            self._flusher = asyncio.create_task(self._flush_later(ACK_RETRY_S))

    async def flush_acks(self) -> bool:
        """Acknowledge every written answer now; False (they are kept) when Redis failed."""
        if not self._acks or self.scripts is None:
            return True
        batch, self._acks = self._acks, {}
        calls = [
            (sid, chunk)
            for sid, ix in batch.items()
            for chunk in _chunks(sorted(ix), MAX_ACK_INDICES)
        ]
        results = await asyncio.gather(
            *(self._ack(sid, chunk) for sid, chunk in calls),
            return_exceptions=True,
        )
        ok = True
        for (sid, chunk), r in zip(calls, results, strict=True):
            if isinstance(r, ScriptRejected):
                continue  # never valid: retrying would not make it so
            if isinstance(r, BaseException):
                ok = False
                if len(self._acks) < MAX_ACK_SESSIONS or sid in self._acks:
                    self._acks.setdefault(sid, set()).update(chunk)
        if not ok:
            log.warning("gateway.outbox_ack_failed", sessions=len(batch))
        return ok

    async def _ack(self, session_id: str, indices: list[int]) -> Any:
        _, scripts = self._at(session_id)
        assert scripts is not None
        return await scripts.outbox_ack(session_id=session_id, indices=indices)

    async def close(self) -> None:
        """Acknowledge what is written (bounded by the caller) and stop the batching."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
        with contextlib.suppress(Exception):
            await self.flush_acks()


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
