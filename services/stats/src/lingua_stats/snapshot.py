"""Build the dashboard snapshot (requirement S1) from Redis alone.

:func:`build_snapshot` is the only place that walks the state for the dashboard; it runs in
the background (:class:`~lingua_stats.snapshot_service.SnapshotService`), never per request
(P5). Nodes and pools are totalled inside Redis (:mod:`lingua_stats.snapshot_read`) with the
live views' definitions (:mod:`lingua_shared.poolview`), so the snapshot and
``/api/v1/pools`` never disagree on what "schedulable" means; the rest is one pipelined round
trip: the last ``stats_window_s`` per-second hashes the dispatchers flush
(``lingua_dispatcher.stats_recorder``), the selection counters, the recent errors and the
active-session index. :class:`SnapshotService` rebuilds it every ``stats_interval_s`` and
keeps the latest good one, already serialized, so a request only copies bytes.

No single bad record stops a build: a node record, pool index entry or counter that does not
hold what the scripts write is skipped, counted in ``invalid_records`` (and the
``lingua_stats_invalid_records`` gauge) and named among its examples; only Redis itself
failing fails a build.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lingua_shared.logs import get_logger
from lingua_shared.poolview import wrong_type
from lingua_shared.runtime import now_ms as wall_ms
from lingua_shared.scripts import Scripts
from lingua_shared.settings import Settings
from lingua_stats.metrics import Metrics
from lingua_stats.snapshot_model import (
    CatalogView,
    InvalidRecords,
    LatencySummary,
    RecentError,
    SeriesPoint,
    Snapshot,
)
from lingua_stats.snapshot_read import read_node_rows, read_pool_summaries

log = get_logger(__name__)


MAX_EXAMPLES = 10


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _counts(raw: Any, key: str, bad: list[str]) -> dict[str, int]:
    """A counter hash; a field that is not an integer, or a key of another type, is skipped
    and named in ``bad``."""
    if wrong_type(raw):
        bad.append(key)
        return {}
    out: dict[str, int] = {}
    for k, v in raw.items():
        try:
            out[_s(k)] = int(v)
        except ValueError:
            bad.append(f"{key}/{_s(k)}")
    return out


def _invalid(nodes: list[str], shards: list[str], counters: list[str]) -> InvalidRecords:
    # examples of every kind: taken in turn from each list
    kinds = [[f"node:{n}" for n in nodes], [f"pool:{s}" for s in shards], counters]
    named = [k[i] for i in range(MAX_EXAMPLES) for k in kinds if i < len(k)]
    return InvalidRecords(
        total=len(nodes) + len(shards) + len(counters),
        nodes=len(nodes),
        pool_shards=len(shards),
        counters=len(counters),
        examples=[n[:120] for n in named[:MAX_EXAMPLES]],
    )


def percentile(buckets: Mapping[int, int], q: float) -> float | None:
    """The upper bound of the bucket that reaches rank ``ceil(q * count)``; None if empty."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank, seen = max(1, math.ceil(q * total)), 0
    for bound in sorted(buckets):
        seen += buckets[bound]
        if seen >= rank:
            return float(bound)
    return float(max(buckets))


def latency(buckets: Mapping[int, int]) -> LatencySummary:
    return LatencySummary(
        count=sum(buckets.values()),
        p50_ms=percentile(buckets, 0.50),
        p90_ms=percentile(buckets, 0.90),
        p99_ms=percentile(buckets, 0.99),
    )


def _buckets(second: Mapping[str, int], prefix: str) -> Counter[int]:
    out: Counter[int] = Counter()
    for field, n in second.items():
        if field.startswith(prefix):
            try:
                out[int(field[len(prefix) :])] += n
            except ValueError:
                continue
    return out


def _recent(raw: Iterable[Any]) -> list[RecentError]:
    out: list[RecentError] = []
    for item in raw:
        try:
            out.append(RecentError.model_validate(json.loads(item)))
        except ValueError:
            continue  # a malformed entry is display data: skip it, keep the rest
    return out


async def build_snapshot(
    scripts: Scripts, settings: Settings, catalog_view: CatalogView, now_ms: int
) -> Snapshot:
    """One snapshot of the state at ``now_ms`` (Redis errors propagate to the caller)."""
    start = time.perf_counter()
    redis, keys = scripts.redis, scripts.keys
    rows, node_summary, bad_nodes = await read_node_rows(
        redis, keys, scripts, now_ms, settings.stats_node_list_max
    )
    pools, bad_shards = await read_pool_summaries(redis, keys, scripts)

    window = max(1, int(settings.stats_window_s))
    now_s = now_ms // 1000
    seconds = list(range(now_s - window + 1, now_s + 1))
    active_after = now_ms - int(settings.session_ttl_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for s in seconds:
            pipe.hgetall(keys.stats_second(s))
        pipe.hgetall(keys.exclusions)
        pipe.hgetall(keys.unserved)
        pipe.lrange(keys.recent_errors, 0, 49)
        pipe.zremrangebyscore(keys.sessions_active, "-inf", active_after)
        pipe.zcount(keys.sessions_active, f"({active_after}", "+inf")
        replies = await pipe.execute(raise_on_error=False)
    bad: list[str] = []
    per_second = [
        _counts(r, keys.stats_second(s), bad) for s, r in zip(seconds, replies, strict=False)
    ]
    exclusions, unserved, recent, _, sessions = replies[window:]
    exclusions = _counts(exclusions, keys.exclusions, bad)
    unserved = _counts(unserved, keys.unserved, bad)
    if wrong_type(recent):
        recent, bad = [], [*bad, keys.recent_errors]
    if wrong_type(sessions):
        sessions, bad = 0, [*bad, keys.sessions_active]

    totals: Counter[str] = Counter()
    series: list[SeriesPoint] = []
    for s, sec in zip(seconds, per_second, strict=True):
        totals.update(sec)
        series.append(
            SeriesPoint(
                ts=s,
                jobs=sec.get("done", 0) + sec.get("failed", 0),
                failed=sec.get("failed", 0),
                dispatch_p99_ms=percentile(_buckets(sec, "d:"), 0.99),
                roundtrip_p99_ms=percentile(_buckets(sec, "r:"), 0.99),
            )
        )
    pairs = {k[5:]: v for k, v in totals.items() if k.startswith("pair:")}
    errors = {k[4:]: v for k, v in totals.items() if k.startswith("err:")}
    finished = totals.get("done", 0) + totals.get("failed", 0)

    snapshot = Snapshot(
        generated_at_ms=now_ms,
        build_ms=0.0,
        window_s=window,
        nodes=node_summary,
        node_list=rows,
        pools=pools,
        sessions_active=int(sessions),
        language_pairs=dict(sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))),
        jobs_per_s=round(finished / window, 3),
        dispatch_latency=latency(_buckets(totals, "d:")),
        roundtrip_latency=latency(_buckets(totals, "r:")),
        errors_by_code=dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        recent_errors=_recent(recent),
        exclusions=dict(sorted(exclusions.items())),
        unserved=dict(sorted(unserved.items())),
        series=series,
        catalog=catalog_view,
        invalid_records=_invalid(bad_nodes, bad_shards, bad),
    )
    snapshot.build_ms = round((time.perf_counter() - start) * 1000, 2)
    return snapshot


class SnapshotService:
    """Rebuild the snapshot in the background; a failed build keeps the last good one."""

    def __init__(
        self,
        scripts: Scripts,
        settings: Settings,
        catalog_view: Callable[[], CatalogView],
        metrics: Metrics,
    ) -> None:
        self.scripts, self.settings = scripts, settings
        self.catalog_view = catalog_view
        self.metrics = metrics
        self.latest: Snapshot | None = None
        self.latest_json: bytes | None = None  # serialized once per build, not per request
        self._task: asyncio.Task[None] | None = None
        self._invalid_total = 0

    async def build_once(self) -> bool:
        """Build and publish one snapshot; False (logged, counted) when the build failed."""
        try:
            snap = await build_snapshot(self.scripts, self.settings, self.catalog_view(), wall_ms())
            body = snap.model_dump_json().encode()
        except Exception as exc:  # keep serving the last good snapshot whatever went wrong
            self.metrics.snapshot_builds.labels("error").inc()
            log.warning("stats.snapshot_failed", error=repr(exc), have_last=self.latest is not None)
            return False
        self.latest, self.latest_json = snap, body
        inv = snap.invalid_records
        for kind in ("nodes", "pool_shards", "counters"):
            self.metrics.invalid_records.labels(kind).set(getattr(inv, kind))
        if inv.total != self._invalid_total:  # logged when it changes, not every build
            log.warning("stats.invalid_records", total=inv.total, examples=inv.examples)
            self._invalid_total = inv.total
        self.metrics.snapshot_builds.labels("ok").inc()
        self.metrics.snapshot_build_seconds.observe(snap.build_ms / 1000)
        return True

    async def _run(self) -> None:
        interval = max(0.01, self.settings.stats_interval_s)
        while True:
            await asyncio.sleep(interval)
            await self.build_once()

    async def start(self) -> None:
        """Build the first snapshot now (cold start: Redis only), then every interval."""
        await self.build_once()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stats-snapshot")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
