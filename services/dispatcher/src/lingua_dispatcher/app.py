"""The dispatcher app: ``create_app(settings)`` with a lifespan that owns every resource.

The lifespan opens :class:`~lingua_shared.runtime.Infra` (a missing Redis, RabbitMQ or a
broken Lua script fails start-up), attaches the consumer of job requests, node job messages
and node disconnections, and runs the job-timer, result-gap and outbox loops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from fastapi import FastAPI

from lingua_dispatcher.jobs import Jobs
from lingua_dispatcher.metrics import Metrics
from lingua_dispatcher.node_events import NodeEvents
from lingua_dispatcher.timers import expire_gaps, fire_timers, loop, republish_outbox
from lingua_shared.bus import consume, declare_queue
from lingua_shared.events import DISPATCHER_EVENT, DispatcherEvent, JobRequest, NodeJobEvent
from lingua_shared.httpserve import add_health_routes
from lingua_shared.logs import get_logger
from lingua_shared.runtime import Infra, UnknownCell, bounded, stop_loops
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
            # one job path per cell, on that cell's keys and scripts (lingua_shared.cells);
            # each event names its cell (none: the default one)
            cells = {view.cell: Jobs(view, metrics) for view in infra.every_cell()}
            events = {cell: NodeEvents(jobs) for cell, jobs in cells.items()}
            default = infra.cell_map.default
            for jobs in cells.values():
                await jobs.stats.start()

            async def handle(ev: DispatcherEvent, message: AbstractIncomingMessage) -> None:
                cell = ev.cell or default
                if cell not in cells:
                    raise UnknownCell(cell, infra.cell_map.names)
                if isinstance(ev, JobRequest):
                    await cells[cell].on_request(ev)
                elif isinstance(ev, NodeJobEvent):
                    await events[cell].on_event(ev)
                else:
                    await events[cell].on_node_lost(ev)

            channel = await infra.consume_channel()
            queue = await declare_queue(
                channel, infra.topo.shared_queue_spec(infra.topo.dispatcher_queue)
            )
            infra.consumers["dispatcher_events"] = await consume(
                queue,
                DISPATCHER_EVENT,
                handle,
                name="dispatcher_events",
                inflight=infra.inflight,
                publisher=infra.publisher,
            )
            stop = asyncio.Event()
            loops = []
            for jobs in cells.values():  # every cell's timers, result gaps and outbox
                loops += [
                    asyncio.create_task(
                        loop(settings.timer_interval_s, "timers", fire_timers, jobs, stop)
                    ),
                    asyncio.create_task(loop(0.2, "gaps", expire_gaps, jobs, stop)),
                    asyncio.create_task(loop(0.25, "outbox", republish_outbox, jobs, stop)),
                ]
            log.info(
                "dispatcher.started",
                instance_id=settings.instance_id,
                policy=settings.select_policy,
                cells=list(cells),
            )
            try:
                yield
            finally:
                # Drain: take no more deliveries and finish (then ack) those in hand; what is
                # not finished in time stays unacked and returns to the queue. The timer and
                # gap loops end their current round: a claimed timer handled half-way would
                # wait out its claim before another replica fired it.
                await infra.stop_consuming(queue, "dispatcher_events", settings.drain_timeout_s)
                await stop_loops(stop, loops, settings.drain_timeout_s)
                await asyncio.gather(
                    *(bounded(jobs.stats.stop(), "stats.flush") for jobs in cells.values())
                )
                state.pop("infra", None)
                log.info("dispatcher.stopped", instance_id=settings.instance_id)

    app = FastAPI(title="lingua dispatcher", lifespan=lifespan)

    add_health_routes(app, lambda: state.get("infra"), metrics.registry)

    return app
