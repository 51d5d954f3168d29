"""The dashboard snapshot (requirement S1): its shape, shared by the builder, the API and the page.

Built in the background every ``LINGUA_STATS_INTERVAL_S`` from Redis; ``GET /api/v1/stats``
returns the latest one and never walks the state. It covers every cell (``LINGUA_CELLS``): the
top-level figures total them, ``cells`` has one entry per cell, and every node row, pool and
recent error names its cell.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class LoadSummary(BaseModel):
    capacity: int = 0
    running: int = 0
    reserved: int = 0
    utilization: float = Field(0.0, description="(running + reserved) / capacity, 0..1")


class NodeSummary(BaseModel):
    registered: int = 0
    alive: int = Field(0, description="the node key exists (TTL alive)")
    connected: int = Field(0, description="a gateway holds its WebSocket (display meaning)")
    schedulable: int = Field(0, description="alive, connected and ready (what selection uses)")
    by_region: dict[str, int] = Field(default_factory=dict)
    by_gpu_tier: dict[str, int] = Field(default_factory=dict)
    load: LoadSummary = Field(default_factory=LoadSummary)


class NodeRow(BaseModel):
    node_id: str
    cell: str = Field("", description="the cell the node is registered in")
    region: str
    gpu_tier: str
    lang_sets: list[list[str]]
    connected: bool
    schedulable: bool
    capacity: int
    running: int
    reserved: int
    last_heartbeat_age_ms: int | None = None
    invalid: bool = Field(
        False, description="skipped as malformed (invalid_records): shown as far as it reads"
    )


class PoolSummary(BaseModel):
    """One pool (language set x region x gpu tier), all its shards together."""

    langset: list[str]
    region: str
    gpu_tier: str
    cell: str = Field("", description="the cell whose keys hold the pool")
    shards: int
    members: int
    schedulable: int
    capacity: int
    running: int
    reserved: int
    load: float = Field(description="(running + reserved) / capacity, 0..1")


class LatencySummary(BaseModel):
    count: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None


class SeriesPoint(BaseModel):
    """One second of the recent past (for the jobs and latency chart)."""

    ts: int = Field(description="epoch seconds")
    jobs: int = 0
    failed: int = 0
    dispatch_p99_ms: float | None = None
    roundtrip_p99_ms: float | None = None


class RecentError(BaseModel):
    ts_ms: int
    code: str
    message: str
    session_id: str | None = None
    job_id: str | None = None
    cell: str | None = Field(None, description="the cell whose stats:recent_errors held it")


class CatalogView(BaseModel):
    """The model hub's service catalog as last fetched (requirement S2)."""

    url: str | None = None
    ok: bool = False
    fetched_at_ms: int | None = None
    last_attempt_ms: int | None = None
    error: str | None = None
    services: list[dict[str, object]] = Field(default_factory=list)


class InvalidRecords(BaseModel):
    """Records the build skipped because a field does not hold what the scripts write
    (written behind their back, or by an older version): reported here, never an error, so
    one corrupt record cannot stop the snapshot (S1)."""

    total: int = 0
    nodes: int = Field(
        0,
        description="nodes:all entries skipped: not a node id, a key that is not a hash, or a "
        "malformed field (capacity, running, reserved, region, gpu_tier, lang_sets); left out "
        "of every count, listed first in node_list",
    )
    pool_shards: int = Field(
        0,
        description="pools:index entries skipped: not a shard id (docs/architecture.md), or a "
        "pool key that is not a sorted set",
    )
    counters: int = Field(
        0, description="counter fields that are not integers (stats:sec:*, exclusions, unserved)"
    )
    examples: list[str] = Field(
        default_factory=list,
        description="at most 10 of them: node:<id>, pool:<entry>, <key>/<field>",
    )


class CellSummary(BaseModel):
    """One scheduling cell (``lingua_shared.cells``): what is mapped to it and what it holds."""

    name: str
    default: bool = Field(description="the cell of every region LINGUA_CELLS does not name")
    regions: list[str] = Field(description='regions mapped to it ("*": every other region)')
    ladder: list[str] = Field(description="the cell, then the cells its sessions fall back to")
    nodes: NodeSummary
    pools: int = Field(0, description="pools (language set x region x gpu tier) in the cell")
    sessions_active: int = 0
    jobs: int = Field(0, description="jobs finished (done + failed) in the window")
    failed: int = Field(0, description="jobs failed in the window")
    jobs_per_s: float = 0.0
    fallbacks_out: dict[str, int] = Field(
        default_factory=dict,
        description="cell -> sessions of this cell placed there instead (stats:fallbacks, "
        "counted since the hash was created)",
    )
    fallbacks_in: dict[str, int] = Field(
        default_factory=dict, description="cell -> sessions of that cell placed here instead"
    )


class Snapshot(BaseModel):
    generated_at_ms: int
    build_ms: float
    window_s: int = Field(60, description="the recent past that rates and percentiles cover")
    nodes: NodeSummary
    node_list: list[NodeRow] = Field(
        description="at most LINGUA_STATS_NODE_LIST_MAX nodes, least healthy first"
    )
    pools: list[PoolSummary]
    sessions_active: int
    language_pairs: dict[str, int] = Field(
        default_factory=dict, description='"src->tgt" -> jobs in the window'
    )
    jobs_per_s: float = 0.0
    dispatch_latency: LatencySummary = Field(default_factory=LatencySummary)
    roundtrip_latency: LatencySummary = Field(default_factory=LatencySummary)
    errors_by_code: dict[str, int] = Field(default_factory=dict)
    recent_errors: list[RecentError] = Field(default_factory=list)
    exclusions: dict[str, int] = Field(default_factory=dict, description="reason -> count")
    unserved: dict[str, int] = Field(
        default_factory=dict, description='"src:tgt" -> requests no pool covers'
    )
    series: list[SeriesPoint] = Field(default_factory=list)
    catalog: CatalogView = Field(default_factory=CatalogView)
    invalid_records: InvalidRecords = Field(default_factory=InvalidRecords)
    cells: list[CellSummary] = Field(
        default_factory=list,
        description="every configured cell, the default first; the figures above total them",
    )
    fallbacks: int = Field(0, description="sessions placed outside their home cell, all cells")
