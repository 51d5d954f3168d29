"""The dispatcher's lifespan opens the real infrastructure and reports readiness."""

from __future__ import annotations

import httpx
import pytest

from lingua_dispatcher.app import create_app
from lingua_shared.errors import DependencyDown
from lingua_shared.settings import Settings


async def test_health_ready_and_metrics(redis_url, amqp_url, bus_prefix):
    settings = Settings(
        redis_url=redis_url,
        amqp_url=amqp_url,
        bus_prefix=bus_prefix,
        cell="test",
        instance_id="dispatcher-test",
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://d") as client,
    ):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "checks": {"redis": True, "amqp": True, "consumers": {"dispatcher_events": True}},
        }
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert 'lingua_dispatcher_info{instance_id="dispatcher-test"} 1.0' in metrics.text
    # after shutdown the app no longer claims readiness
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://d") as c:
        assert (await c.get("/readyz")).status_code == 503


async def test_start_up_fails_fast_without_redis(amqp_url, bus_prefix):
    # port 1 on loopback: nothing listens, the connection is refused at once
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0", amqp_url=amqp_url, bus_prefix=bus_prefix, cell="test"
    )
    app = create_app(settings)
    with pytest.raises(DependencyDown):
        async with app.router.lifespan_context(app):
            pass
