"""Node events to the cell of their node (``lingua_shared.cells``).

A registration's cell is its region's; a disconnection and every beat name their node's cell
(the gateway computed it from the same region at registration; none = the default cell). A
heartbeat batch is split by cell and each part applied in its cell; every cell gets its part,
an empty one included, since each cell's sweeper judges expiries behind the gateways'
watermarks in that cell (``heartbeats:covered``). With one cell this is the handler itself.
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage

from lingua_node_manager.handlers import NodeEventHandler
from lingua_node_manager.metrics import Metrics
from lingua_shared.events import Beat, HeartbeatBatch, NodeEvent, NodeRegisterEvent
from lingua_shared.logs import get_logger
from lingua_shared.runtime import Infra, UnknownCell

log = get_logger(__name__)


class CellRouter:
    def __init__(self, infra: Infra, metrics: Metrics) -> None:
        self.infra = infra
        self.metrics = metrics
        self.handlers = {view.cell: NodeEventHandler(view, metrics) for view in infra.every_cell()}
        self.default = infra.cell_map.default

    def handler(self, cell: str | None) -> NodeEventHandler:
        name = cell or self.default
        found = self.handlers.get(name)
        if found is None:
            raise UnknownCell(name, self.infra.cell_map.names)
        return found

    async def __call__(self, event: NodeEvent, message: AbstractIncomingMessage) -> None:
        if isinstance(event, HeartbeatBatch):
            await self.heartbeats(event)
        elif isinstance(event, NodeRegisterEvent):
            cell = self.infra.cell_map.cell_of(event.region)
            await self.handlers[cell].register(event, message)
        else:
            await self.handler(event.cell).disconnected(event)

    async def heartbeats(self, batch: HeartbeatBatch) -> None:
        if len(self.handlers) == 1:
            await self.handlers[self.default].heartbeats(batch)
            return
        parts: dict[str, list[Beat]] = {cell: [] for cell in self.handlers}
        unknown = 0
        for beat in batch.beats:
            part = parts.get(beat.cell or self.default)
            if part is None:
                unknown += 1
            else:
                part.append(beat)
        if unknown:
            # replicas with different LINGUA_CELLS: those beats cannot be applied anywhere
            self.metrics.heartbeats.labels("unknown_cell").inc(unknown)
            log.error("node.heartbeat_unknown_cell", beats=unknown, gateway_id=batch.gateway_id)
        await asyncio.gather(
            *(
                self.handlers[cell].heartbeats(batch.model_copy(update={"beats": beats}))
                for cell, beats in parts.items()
            )
        )
