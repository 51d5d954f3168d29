"""The stats app: ``create_app(settings)`` with a lifespan that owns every resource.

``/api/v1/pools`` and ``/api/v1/nodes`` read Redis live at each request (N8: the pool view
is never cached). The background stats snapshot (S1) and the catalog cache (S2) are later
work; this service has no bus consumers yet, so ``/readyz`` reports none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from lingua_shared.errors import DependencyDown
from lingua_shared.httpserve import add_health_routes
from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger
from lingua_shared.poolview import NodeView, PoolView, read_nodes, read_pool_view
from lingua_shared.runtime import Infra, now_ms
from lingua_shared.settings import Settings
from lingua_stats.metrics import Metrics

log = get_logger(__name__)
DEFAULT_PORT = 5040
T = TypeVar("T")


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    state: dict[str, Infra] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Infra.open(settings) as infra:
            state["infra"] = infra
            log.info("stats.started", instance_id=settings.instance_id)
            try:
                yield
            finally:
                state.pop("infra", None)
                log.info("stats.stopped", instance_id=settings.instance_id)

    app = FastAPI(title="lingua stats", lifespan=lifespan)

    async def live(view: str, read: Callable[[Any, Keys, int], Awaitable[T]]) -> T | JSONResponse:
        infra = state.get("infra")
        if infra is None:
            return JSONResponse(DependencyDown("not started").to_message().to_wire(), 503)
        start = time.perf_counter()
        try:
            result = await read(infra.redis, infra.keys, now_ms())
        except RedisError as exc:
            metrics.reads.labels(view, "redis_error").inc()
            log.warning("stats.read_failed", view=view, error=repr(exc))
            error = DependencyDown(f"Redis did not answer: {exc.__class__.__name__}")
            return JSONResponse(error.to_message().to_wire(), status_code=503)
        metrics.read_seconds.labels(view).observe(time.perf_counter() - start)
        metrics.reads.labels(view, "ok").inc()
        return result

    add_health_routes(app, lambda: state.get("infra"), metrics.registry)

    @app.get("/api/v1/pools", response_model=PoolView)
    async def pools() -> PoolView | JSONResponse:
        return await live("pools", read_pool_view)

    @app.get("/api/v1/nodes", response_model=list[NodeView])
    async def nodes() -> list[NodeView] | JSONResponse:
        return await live("nodes", read_nodes)

    return app
