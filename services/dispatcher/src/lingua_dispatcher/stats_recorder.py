"""Per-second job counters for the stats snapshot (requirement S1), kept off the hot path (P5).

The dispatcher only bumps in-process counters while it handles a job; a background task
flushes them every ``stats_flush_s`` in ONE pipelined round trip. Each epoch second is a
hash ``stats_second(s)`` (``done``, ``failed``, ``err:<CODE>``, ``pair:<src>-><tgt>``,
``d:<bucket_ms>``, ``r:<bucket_ms>``) that expires after an hour, so any number of
dispatcher replicas add into the same seconds and the stats service merges nothing itself.
Everything here is display data: a failed flush is logged and dropped, never retried, and
never raised into job handling.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections import Counter

from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger
from lingua_shared.runtime import now_ms, pause

log = get_logger(__name__)

# log-spaced upper bounds (ms); a latency is counted in the first bucket >= it, the slowest
# in the last one, so a percentile read from the buckets is an upper bound of the truth
LATENCY_BUCKETS_MS = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700,
    1000, 2000, 5000, 10000, 30000,
)  # fmt: skip
SECOND_TTL_S = 3600
RECENT_ERRORS = 50
MAX_PENDING_ERRORS = 200  # between two flushes; older ones would be trimmed away anyway


def bucket_ms(latency_ms: float) -> int:
    """The bucket (its upper bound in ms) a latency falls in."""
    i = bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)
    return LATENCY_BUCKETS_MS[min(i, len(LATENCY_BUCKETS_MS) - 1)]


class StatsRecorder:
    """In-process counters by epoch second; :meth:`flush` writes and clears them."""

    def __init__(self, redis: Redis, keys: Keys, flush_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.flush_s = flush_s
        self._seconds: dict[int, Counter[str]] = {}
        self._errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _count(self, field: str, ts_ms: int | None = None, n: int = 1) -> None:
        second = (ts_ms if ts_ms is not None else now_ms()) // 1000
        self._seconds.setdefault(second, Counter())[field] += n

    # -- hooks (synchronous, no I/O: safe on the hot path) ------------------------------
    def dispatched(self, latency_ms: float, ts_ms: int | None = None) -> None:
        self._count(f"d:{bucket_ms(latency_ms)}", ts_ms)

    def done(
        self, src: str, tgt: str, roundtrip_ms: float | None, ts_ms: int | None = None
    ) -> None:
        self._count("done", ts_ms)
        self._count(f"pair:{src}->{tgt}", ts_ms)
        if roundtrip_ms is not None:
            self._count(f"r:{bucket_ms(roundtrip_ms)}", ts_ms)

    def failed(
        self,
        code: str,
        message: str,
        *,
        src: str = "",
        tgt: str = "",
        session_id: str | None = None,
        job_id: str | None = None,
        ts_ms: int | None = None,
    ) -> None:
        """A job ended with a typed error sent to its client."""
        ts = ts_ms if ts_ms is not None else now_ms()
        self._count("failed", ts)
        self._count(f"err:{code}", ts)
        if src and tgt:
            self._count(f"pair:{src}->{tgt}", ts)
        entry = {
            "ts_ms": ts,
            "code": code,
            "message": message[:500],
            "session_id": session_id,
            "job_id": job_id,
        }
        self._errors.append(json.dumps(entry))
        del self._errors[:-MAX_PENDING_ERRORS]

    # -- flush --------------------------------------------------------------------------
    async def flush(self) -> bool:
        """Write everything pending in one pipelined round trip; False if it was dropped."""
        seconds, errors = self._seconds, self._errors
        if not seconds and not errors:
            return True
        self._seconds, self._errors = {}, []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for second, counts in seconds.items():
                    key = self.keys.stats_second(second)
                    for field, n in counts.items():
                        pipe.hincrby(key, field, n)
                    pipe.expire(key, SECOND_TTL_S)
                if errors:
                    pipe.lpush(self.keys.recent_errors, *errors)
                    pipe.ltrim(self.keys.recent_errors, 0, RECENT_ERRORS - 1)
                await pipe.execute()
        except Exception as exc:  # display data: never let it hurt the dispatcher
            log.warning(
                "stats.flush_dropped", seconds=len(seconds), errors=len(errors), error=repr(exc)
            )
            return False
        return True

    async def _run(self) -> None:
        while not self._stop.is_set():
            await pause(self._stop, self.flush_s)
            await self.flush()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stats-recorder")

    async def stop(self) -> None:
        """Stop the loop and flush what is left (shutdown keeps the last second's counts).

        By a flag, never by cancelling: a cancel landing inside redis-py can be swallowed,
        and awaiting the task would then never end (the caller bounds this step too)."""
        self._stop.set()
        if self._task is not None:
            await self._task  # its last round flushes
            self._task = None
        await self.flush()
