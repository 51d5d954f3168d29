"""Run an ASGI service the way all our HTTP services run: uvicorn, our JSON logs, and a
clean exit code.

uvicorn re-raises SIGTERM after a graceful shutdown, so the process would end "killed by
signal 15" even when every delivery was finished; orchestrators and our tests read exit 0 as
"drained cleanly", so the captured signal is dropped once shutdown has begun.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from lingua_shared.runtime import Infra, render_metrics


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve_app(app: Any, host: str, port: int, graceful_timeout_s: float) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout_s,
        lifespan="on",
    )
    _Server(config).run()


def add_health_routes(
    app: Any, infra_of: Callable[[], Infra | None], registry: CollectorRegistry
) -> None:
    """``/healthz`` (alive), ``/readyz`` (:meth:`Infra.readiness`, 503 before start-up and
    after shutdown) and ``/metrics`` (Prometheus text) on a FastAPI ``app``: every HTTP
    service answers them the same way."""
    from fastapi import Response
    from fastapi.responses import JSONResponse, PlainTextResponse

    # ``response_model=None``: with postponed annotations and these function-local imports,
    # FastAPI cannot resolve "JSONResponse" / "Response" and would make /openapi.json fail
    # with a 500 (a ForwardRef in the schema), in every service that uses these routes.

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers; no dependency is checked."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=None,
        responses={503: {"description": "not ready: not started, or a dependency is down"}},
    )
    async def readyz() -> JSONResponse:
        """Readiness: Redis, RabbitMQ and every consumer are up (503 while not)."""
        infra = infra_of()
        if infra is None:
            return JSONResponse({"ready": False}, status_code=503)
        ok, checks = await infra.readiness()
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", response_model=None, response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        """Prometheus metrics, text exposition format."""
        return Response(render_metrics(registry), media_type="text/plain; version=0.0.4")
