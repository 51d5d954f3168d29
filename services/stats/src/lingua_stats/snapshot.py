"""Build the dashboard snapshot (requirement S1) from Redis alone.

:func:`build_snapshot` is the only place that walks the state for the dashboard; it runs in
the background (:class:`SnapshotService`), never per request (P5). Nodes and pools are
totalled inside Redis (:mod:`lingua_stats.snapshot_read`) with the live views' definitions
(:mod:`lingua_shared.poolview`), so the snapshot and ``/api/v1/pools`` never disagree on
what "schedulable" means; the rest is one pipelined round trip: the last ``stats_window_s``
per-second hashes the dispatchers flush (``lingua_dispatcher.stats_recorder``), the selection
counters, the recent errors, the active-session index and the fallback counters.
:class:`SnapshotService` rebuilds it every ``stats_interval_s`` and keeps the latest good one,
already serialized, so a request only copies bytes.

Every configured cell (``LINGUA_CELLS``) is read that way
(:func:`lingua_stats.snapshot_read.read_cell`, at most ``lingua_stats.cells.CELL_READS`` cells
at a time); the top-level figures total the cells, so a deployment of one cell sees what it
always saw, and ``cells`` has one :class:`~lingua_stats.snapshot_model.CellSummary` per cell
(regions, ladder, nodes, pools, sessions, jobs, fallbacks out and in).

No single bad record stops a build: a node record, pool index entry or counter that does not
hold what the scripts write is skipped, counted in ``invalid_records`` (and the
``lingua_stats_invalid_records`` gauge) and named among its examples; only Redis itself
failing fails a build.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence

from lingua_shared.cells import CellMap
from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger
from lingua_shared.runtime import now_ms as wall_ms
from lingua_shared.runtime import pause
from lingua_shared.scripts import Scripts
from lingua_shared.settings import Settings
from lingua_stats.cells import each_cell
from lingua_stats.metrics import Metrics
from lingua_stats.snapshot_model import (
    CatalogView,
    CellSummary,
    InvalidRecords,
    LatencySummary,
    LoadSummary,
    NodeRow,
    NodeSummary,
    RecentError,
    SeriesPoint,
    Snapshot,
)
from lingua_stats.snapshot_read import RECENT_ERRORS, CellRead, load_ratio, read_cell

log = get_logger(__name__)


MAX_EXAMPLES = 10


def _invalid(reads: Sequence[CellRead]) -> InvalidRecords:
    # with several cells, a node or pool entry is named with its cell (counter keys carry it)
    several = len(reads) > 1

    def named(r: CellRead, kind: str, ids: list[str]) -> list[str]:
        return [f"{r.cell}/{kind}:{i}" if several else f"{kind}:{i}" for i in ids]

    nodes = [n for r in reads for n in named(r, "node", r.bad_nodes)]
    shards = [s for r in reads for s in named(r, "pool", r.bad_shards)]
    counters = [c for r in reads for c in r.bad_counters]
    # examples of every kind: taken in turn from each list
    kinds = [nodes, shards, counters]
    examples = [k[i] for i in range(MAX_EXAMPLES) for k in kinds if i < len(k)]
    return InvalidRecords(
        total=len(nodes) + len(shards) + len(counters),
        nodes=len(nodes),
        pool_shards=len(shards),
        counters=len(counters),
        examples=[n[:120] for n in examples[:MAX_EXAMPLES]],
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


def _by_count(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _sum(maps: Sequence[Mapping[str, int]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in maps:
        out.update(m)
    return out


def _nodes(summaries: Sequence[NodeSummary]) -> NodeSummary:
    """The node figures of several cells together."""
    if len(summaries) == 1:
        return summaries[0]
    cap, run, res = (
        sum(getattr(s.load, f) for s in summaries) for f in ("capacity", "running", "reserved")
    )
    return NodeSummary(
        registered=sum(s.registered for s in summaries),
        alive=sum(s.alive for s in summaries),
        connected=sum(s.connected for s in summaries),
        schedulable=sum(s.schedulable for s in summaries),
        by_region=dict(sorted(_sum([s.by_region for s in summaries]).items())),
        by_gpu_tier=dict(sorted(_sum([s.by_gpu_tier for s in summaries]).items())),
        load=LoadSummary(
            capacity=cap, running=run, reserved=res, utilization=load_ratio(cap, run, res)
        ),
    )


def _rows(reads: Sequence[CellRead], limit: int) -> list[NodeRow]:
    """At most ``limit`` rows of every cell, the least healthy first (not schedulable, then not
    connected, each by id, then by cell), as each cell's list is ordered."""
    if len(reads) == 1:
        return reads[0].rows
    rows = [row for r in reads for row in r.rows]
    rows.sort(key=lambda row: (row.schedulable, row.connected, row.node_id))  # stable: cells
    return rows[:limit]


def _recent(reads: Sequence[CellRead]) -> list[RecentError]:
    """Each cell's latest errors as pushed; with several cells, the newest of them all first."""
    if len(reads) == 1:
        return reads[0].recent
    errors = [e for r in reads for e in r.recent]
    errors.sort(key=lambda e: -e.ts_ms)
    return errors[:RECENT_ERRORS]


def _cells(cell_map: CellMap, reads: Sequence[CellRead], window: int) -> list[CellSummary]:
    fallbacks_in: dict[str, Counter[str]] = defaultdict(Counter)
    for r in reads:
        for target, n in r.fallbacks.items():
            fallbacks_in[target][r.cell] += n
    out = []
    for r in reads:
        failed = sum(sec.get("failed", 0) for sec in r.seconds)
        jobs = failed + sum(sec.get("done", 0) for sec in r.seconds)
        out.append(
            CellSummary(
                name=r.cell,
                default=r.cell == cell_map.default,
                regions=cell_map.regions_of(r.cell),
                ladder=list(cell_map.ladder(r.cell)),
                nodes=r.nodes,
                pools=len(r.pools),
                sessions_active=r.sessions,
                jobs=jobs,
                failed=failed,
                jobs_per_s=round(jobs / window, 3),
                fallbacks_out=_by_count(r.fallbacks),
                fallbacks_in=_by_count(fallbacks_in[r.cell]),
            )
        )
    return out


async def build_snapshot(
    scripts: Scripts, settings: Settings, catalog_view: CatalogView, now_ms: int
) -> Snapshot:
    """One snapshot of every cell of ``settings`` at ``now_ms`` (``scripts`` on any cell's
    keys: each cell is read through ``scripts.for_cell``); Redis errors propagate."""
    start = time.perf_counter()
    cell_map = settings.cell_map()
    window = max(1, int(settings.stats_window_s))
    now_s = now_ms // 1000
    seconds = list(range(now_s - window + 1, now_s + 1))
    reads = await each_cell(
        cell_map.ordered,
        lambda cell: read_cell(scripts.for_cell(Keys(cell)), settings, now_ms, seconds),
    )

    totals: Counter[str] = Counter()
    series: list[SeriesPoint] = []
    for i, s in enumerate(seconds):
        sec = _sum([r.seconds[i] for r in reads])
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
    cells = _cells(cell_map, reads, window)

    snapshot = Snapshot(
        generated_at_ms=now_ms,
        build_ms=0.0,
        window_s=window,
        nodes=_nodes([r.nodes for r in reads]),
        node_list=_rows(reads, settings.stats_node_list_max),
        pools=[p for r in reads for p in r.pools],
        sessions_active=sum(r.sessions for r in reads),
        language_pairs=_by_count(pairs),
        jobs_per_s=round(finished / window, 3),
        dispatch_latency=latency(_buckets(totals, "d:")),
        roundtrip_latency=latency(_buckets(totals, "r:")),
        errors_by_code=_by_count(errors),
        recent_errors=_recent(reads),
        exclusions=dict(sorted(_sum([r.exclusions for r in reads]).items())),
        unserved=dict(sorted(_sum([r.unserved for r in reads]).items())),
        series=series,
        catalog=catalog_view,
        invalid_records=_invalid(reads),
        cells=cells,
        fallbacks=sum(sum(c.fallbacks_out.values()) for c in cells),
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
        self._stop = asyncio.Event()
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
        while not self._stop.is_set():
            await pause(self._stop, interval)
            if not self._stop.is_set():
                await self.build_once()

    async def start(self) -> None:
        """Build the first snapshot now (cold start: Redis only), then every interval."""
        await self.build_once()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="stats-snapshot")

    async def stop(self) -> None:
        """By a flag, never by cancelling (a cancel landing inside redis-py can be swallowed);
        the build in progress ends first (the caller bounds this step)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
