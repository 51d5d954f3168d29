"""The session record in Redis: which gateway and connection hold a session (J6).

The dispatcher reads ``gateway_id`` / ``conn_id`` from ``session:<sid>`` to route a
session's answers, and its scripts keep the delivery cursor ``next_deliver`` there. The
gateway writes the record at ``session_init``, refreshes its TTL on activity, and on close
removes only the binding (``gateway_id``, ``conn_id``): the cursor and the pool affinity
stay until the TTL, so a job finishing after the close neither resets the order state nor
gets published to anyone.

Each write also scores the session in ``sessions:active`` (ZADD now_ms; ZREM on close) in
the same round trip: a display index for the stats snapshot, which counts the members seen
within the session TTL and trims the older ones. Nothing on the job path reads it.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lingua_shared.errors import DependencyDown
from lingua_shared.keys import Keys
from lingua_shared.runtime import now_ms

BINDING_FIELDS = ("gateway_id", "conn_id")


class SessionStore:
    def __init__(self, redis: Redis, keys: Keys, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def create(self, session_id: str, fields: dict[str, str]) -> None:
        """Write the whole record with its TTL in one MULTI; :class:`DependencyDown` if not."""
        key = self.keys.session(session_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, self.ttl_ms)
                pipe.zadd(self.keys.sessions_active, {session_id: now_ms()})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"session store unavailable: {exc}") from exc

    async def touch(self, session_id: str, fields: dict[str, str]) -> bool:
        """Refresh the TTL; rewrite the record if it is gone (expired, Redis restarted).

        Returns ``True`` when the record had to be restored. Without the record the
        dispatcher could not route this session's answers back to this gateway.
        """
        key = self.keys.session(session_id)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.pexpire(key, self.ttl_ms)
                pipe.zadd(self.keys.sessions_active, {session_id: now_ms()})
                refreshed, _ = await pipe.execute()
            if refreshed:
                return False
            await self.create(session_id, fields)
            return True
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"session store unavailable: {exc}") from exc

    async def unbind(self, session_id: str) -> None:
        """Remove the binding only (HDEL never recreates an expired record)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self.keys.session(session_id), *BINDING_FIELDS)
                pipe.zrem(self.keys.sessions_active, session_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"session store unavailable: {exc}") from exc
