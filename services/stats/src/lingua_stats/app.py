"""The stats app: ``create_app(settings)`` with a lifespan that owns every resource.

``/api/v1/pools`` and ``/api/v1/nodes`` read Redis live at each request (N8: the pool view
is never cached), every configured cell (:mod:`lingua_stats.cells`), each entry naming its
cell. ``/api/v1/stats`` returns the latest background snapshot (S1, every cell too) and never
walks the state: the lifespan builds the first snapshot before it yields (Redis only; the
catalog cache (S2) starts after it, so a hub outage cannot delay or fail start-up), and
``/readyz`` answers ready only once a snapshot exists. No bus consumers, so ``/readyz``
reports none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError

from lingua_shared.errors import DependencyDown
from lingua_shared.httpserve import add_health_routes
from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger
from lingua_shared.protocol import ErrorMessage
from lingua_shared.runtime import Infra, bounded, now_ms
from lingua_shared.settings import Settings
from lingua_stats.catalog import CatalogCache
from lingua_stats.cells import CellNodeView, CellPoolView, read_all_nodes, read_pool_views
from lingua_stats.dashboard import add_dashboard_routes
from lingua_stats.metrics import Metrics
from lingua_stats.snapshot import SnapshotService
from lingua_stats.snapshot_model import Snapshot

log = get_logger(__name__)
DEFAULT_PORT = 5040
T = TypeVar("T")


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    state: dict[str, Infra] = {}
    snapshots: dict[str, SnapshotService] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Infra.open(settings) as infra:
            catalog = CatalogCache(
                settings.catalog_url, settings.catalog_interval_s, settings.catalog_timeout_s
            )
            service = SnapshotService(infra.scripts, settings, catalog.view, metrics)
            await service.start()  # cold start: the first build, before any hub fetch
            await catalog.start()
            snapshots["service"] = service
            state["infra"] = infra
            log.info(
                "stats.started",
                instance_id=settings.instance_id,
                snapshot=service.latest is not None,
                interval_s=settings.stats_interval_s,
            )
            try:
                yield
            finally:
                state.pop("infra", None)
                snapshots.pop("service", None)
                await bounded(service.stop(), "snapshot.stop")
                await bounded(catalog.stop(), "catalog.stop")
                log.info("stats.stopped", instance_id=settings.instance_id)

    app = FastAPI(title="lingua stats", lifespan=lifespan)

    async def live(
        view: str, read: Callable[[Any, Sequence[Keys], int], Awaitable[T]]
    ) -> T | JSONResponse:
        infra = state.get("infra")
        if infra is None:
            return JSONResponse(DependencyDown("not started").to_message().to_wire(), 503)
        start = time.perf_counter()
        try:
            result = await read(infra.redis, [c.keys for c in infra.every_cell()], now_ms())
        except RedisError as exc:
            metrics.reads.labels(view, "redis_error").inc()
            log.warning("stats.read_failed", view=view, error=repr(exc))
            error = DependencyDown(f"Redis did not answer: {exc.__class__.__name__}")
            return JSONResponse(error.to_message().to_wire(), status_code=503)
        metrics.read_seconds.labels(view).observe(time.perf_counter() - start)
        metrics.reads.labels(view, "ok").inc()
        return result

    def ready_infra() -> Infra | None:
        """Ready only with a snapshot to serve: a failed cold build leaves /readyz at 503
        until a background rebuild succeeds."""
        service = snapshots.get("service")
        return state.get("infra") if service is not None and service.latest else None

    add_health_routes(app, ready_infra, metrics.registry)

    # every data route answers 503 with a typed error when Redis (or a first snapshot) is missing
    unavailable: dict[int | str, dict[str, Any]] = {
        503: {"model": ErrorMessage, "description": "DEPENDENCY_DOWN: Redis or a snapshot missing"}
    }

    @app.get("/api/v1/pools", response_model=CellPoolView, responses=unavailable)
    async def pools() -> CellPoolView | JSONResponse:
        """Pools, their shards and members, read live from Redis (S3; never cached, N8): every
        cell, the default first, each group naming its cell; node counts total the cells."""
        return await live("pools", read_pool_views)

    @app.get("/api/v1/nodes", response_model=list[CellNodeView], responses=unavailable)
    async def nodes() -> list[CellNodeView] | JSONResponse:
        """Every registered node, connected vs schedulable, read live from Redis: every cell,
        the default first, each cell's nodes by id, each naming its cell."""
        return await live("nodes", read_all_nodes)

    @app.get("/api/v1/stats", response_model=Snapshot, responses=unavailable)
    async def stats() -> Response:
        """The latest snapshot, pre-serialized: the cost does not grow with the node count."""
        service = snapshots.get("service")
        body = service.latest_json if service is not None else None
        if body is None:
            error = DependencyDown("no stats snapshot has been built yet")
            return JSONResponse(error.to_message().to_wire(), status_code=503)
        return Response(body, media_type="application/json")

    add_dashboard_routes(app, settings)

    return app
