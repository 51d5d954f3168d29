"""Every cell at once: the order the stats service shows them in, what each is mapped from, and
the live views (``GET /api/v1/pools``, ``GET /api/v1/nodes``) over all of them.

A cell (``lingua_shared.cells``) keeps its own nodes, pools, sessions and counters under its own
hash tag. The stats service reads each configured cell with the same reads as before (the live
views of ``lingua_shared.poolview``, the snapshot of :mod:`lingua_stats.snapshot`) and shows
them together, the default cell first, every entry naming its cell. At most
:data:`CELL_READS` cells are read at the same time. With one cell (LINGUA_CELLS unset) the
views are that cell's as before, with the added ``cell`` field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pydantic import Field
from redis.asyncio import Redis

from lingua_shared.keys import Keys
from lingua_shared.poolview import (
    NodeCounts,
    NodeView,
    PoolGroup,
    PoolView,
    read_nodes,
    read_pool_view,
)

CELL_READS = 8  # cells read at the same time (each read is a few pipelined round trips)
T = TypeVar("T")
R = TypeVar("R")


async def each_cell(
    cells: Sequence[T], read: Callable[[T], Awaitable[R]], limit: int = CELL_READS
) -> list[R]:
    """``read`` of every cell, at most ``limit`` at a time, in the cells' order. Every read
    finishes before the first error (if any) is raised: none is left running behind."""
    if len(cells) == 1:
        return [await read(cells[0])]
    gate = asyncio.Semaphore(max(1, limit))

    async def one(cell: T) -> R:
        async with gate:
            return await read(cell)

    results = await asyncio.gather(*(one(c) for c in cells), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


class CellPoolGroup(PoolGroup):
    cell: str = Field(description="the cell whose keys hold the pool")


class CellPoolView(PoolView):
    """Every cell's pools; ``nodes`` and ``invalid_records`` total the cells."""

    groups: list[CellPoolGroup]  # type: ignore[assignment]
    cells: list[str] = Field(description="the cells read, the default first")


class CellNodeView(NodeView):
    cell: str = Field(description="the cell the node is registered in")


async def read_pool_views(redis: Redis, cells: Sequence[Keys], now_ms: int) -> CellPoolView:
    """The live pool view of every cell, in the cells' order (never cached, N8)."""
    views = await each_cell(cells, lambda keys: read_pool_view(redis, keys, now_ms))
    fields = list(PoolGroup.model_fields)
    groups = [
        CellPoolGroup.model_construct(cell=keys.cell, **{f: getattr(g, f) for f in fields})
        for keys, view in zip(cells, views, strict=True)
        for g in view.groups
    ]
    counts = {f: sum(getattr(view.nodes, f) for view in views) for f in NodeCounts.model_fields}
    return CellPoolView(
        generated_at_ms=now_ms,
        groups=groups,
        nodes=NodeCounts(**counts),
        invalid_records=sum(view.invalid_records for view in views),
        cells=[keys.cell for keys in cells],
    )


async def read_all_nodes(redis: Redis, cells: Sequence[Keys], now_ms: int) -> list[CellNodeView]:
    """Every node of every cell: the cells in order, each cell's nodes by id."""
    lists = await each_cell(cells, lambda keys: read_nodes(redis, keys, now_ms))
    fields = list(NodeView.model_fields)
    return [
        CellNodeView.model_construct(cell=keys.cell, **{f: getattr(n, f) for f in fields})
        for keys, nodes in zip(cells, lists, strict=True)
        for n in nodes
    ]
