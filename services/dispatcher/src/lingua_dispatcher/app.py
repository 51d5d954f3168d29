"""The dispatcher app: ``create_app(settings)`` with a lifespan that owns every resource.

The lifespan opens :class:`~lingua_shared.runtime.Infra` so that a missing Redis, RabbitMQ or
a broken Lua script fails start-up. No consumers are attached yet (the job path is a later
issue), so ``/readyz`` checks Redis and the AMQP channel only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from lingua_dispatcher.metrics import Metrics
from lingua_shared.logs import get_logger
from lingua_shared.runtime import Infra, render_metrics
from lingua_shared.settings import Settings

log = get_logger(__name__)
DEFAULT_PORT = 5030


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics(settings.instance_id)
    state: dict[str, Infra] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Infra.open(settings) as infra:
            state["infra"] = infra
            log.info("dispatcher.started", instance_id=settings.instance_id)
            try:
                yield
            finally:
                state.pop("infra", None)
                log.info("dispatcher.stopped", instance_id=settings.instance_id)

    app = FastAPI(title="lingua dispatcher", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        infra = state.get("infra")
        if infra is None:
            return JSONResponse({"ready": False}, status_code=503)
        ok, checks = await infra.readiness()
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(render_metrics(metrics.registry), media_type="text/plain; version=0.0.4")

    return app
