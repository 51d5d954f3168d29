"""The node-manager app: ``create_app(settings)`` with a lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from lingua_node_manager.cell_router import CellRouter
from lingua_node_manager.metrics import Metrics
from lingua_node_manager.sweeper import SlotRecount, reconcile_once, run_every, sweep_once
from lingua_shared.bus import consume, declare_queue
from lingua_shared.events import NODE_EVENT
from lingua_shared.httpserve import add_health_routes
from lingua_shared.logs import get_logger
from lingua_shared.runtime import Infra, stop_loops
from lingua_shared.settings import Settings

log = get_logger(__name__)
DEFAULT_PORT = 5020


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    state: dict[str, Infra] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Infra.open(settings) as infra:
            state["infra"] = infra
            handler = CellRouter(infra, metrics)
            channel = await infra.consume_channel()
            topo = infra.topo
            # two queues, consumed at once: heartbeat batches never wait behind registrations
            queues = {
                "node_events": await declare_queue(
                    channel, topo.shared_queue_spec(topo.node_manager_queue)
                ),
                "node_heartbeats": await declare_queue(
                    channel, topo.shared_queue_spec(topo.node_manager_heartbeat_queue)
                ),
            }
            for name, queue in queues.items():
                infra.consumers[name] = await consume(
                    queue,
                    NODE_EVENT,
                    handler,
                    name=name,
                    on_outcome=lambda o: (
                        metrics.events.labels("bus", o).inc() if o != "ok" else None
                    ),
                    inflight=infra.inflight,
                )
            stop = asyncio.Event()
            # every cell's sweep, slot recount and view reconciliation (each its own loop:
            # one cell's slow round never holds another's)
            loops = []
            for cell in infra.every_cell():
                loops += [
                    asyncio.create_task(
                        run_every(
                            settings.sweep_interval_s, "sweep", stop, sweep_once, cell, metrics
                        )
                    ),
                    asyncio.create_task(
                        run_every(
                            settings.sweep_interval_s,
                            "slots",
                            stop,
                            SlotRecount(cell, metrics).tick,
                        )
                    ),
                    asyncio.create_task(
                        run_every(
                            settings.reconcile_interval_s,
                            "reconcile",
                            stop,
                            reconcile_once,
                            cell,
                            metrics,
                        )
                    ),
                ]
            log.info(
                "node_manager.started",
                instance_id=settings.instance_id,
                cells=list(infra.cell_map.names),
            )
            try:
                yield
            finally:
                # Drain: take no more deliveries, finish (then ack) the registrations and
                # heartbeat batches in hand; what is not finished in time stays unacked and
                # returns to the queue. Sweeps and reconciliations end their current round.
                await asyncio.gather(
                    *(
                        infra.stop_consuming(queue, name, settings.drain_timeout_s)
                        for name, queue in queues.items()
                    )
                )
                await stop_loops(stop, loops, settings.drain_timeout_s)
                log.info("node_manager.stopped", instance_id=settings.instance_id)

    app = FastAPI(title="lingua node-manager", lifespan=lifespan)

    add_health_routes(app, lambda: state.get("infra"), metrics.registry)

    return app
