"""Node events reach the cell of their node: a registration by its region, a goodbye by the
cell it names, and a heartbeat batch split so that every cell gets its part (an empty one
included: each cell's sweeper waits for the gateway's watermark in that cell)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lingua_node_manager.cell_router import CellRouter
from lingua_node_manager.metrics import Metrics
from lingua_shared.cells import CellMap
from lingua_shared.events import Beat, HeartbeatBatch, NodeDisconnected, NodeRegisterEvent
from lingua_shared.runtime import UnknownCell
from lingua_shared.settings import Settings


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def heartbeats(self, batch: HeartbeatBatch) -> None:
        self.calls.append(("heartbeats", batch))

    async def register(self, ev: NodeRegisterEvent, message: Any) -> None:
        self.calls.append(("register", ev.node_id))

    async def disconnected(self, ev: NodeDisconnected) -> None:
        self.calls.append(("disconnected", ev.node_id))


def router(cells: str) -> tuple[CellRouter, dict[str, Recorder]]:
    cell_map = CellMap.parse(cells)
    views = [SimpleNamespace(cell=c, settings=Settings()) for c in cell_map.names]
    infra = SimpleNamespace(cell_map=cell_map, every_cell=lambda: views)
    r = CellRouter(infra, Metrics())  # type: ignore[arg-type]
    recorders = {c: Recorder() for c in cell_map.names}
    r.handlers = recorders  # type: ignore[assignment]
    return r, recorders


def beat(node_id: str, cell: str | None) -> Beat:
    return Beat(node_id=node_id, conn_id=f"c-{node_id}", ts_ms=1, cell=cell)


def registration(node_id: str, region: str) -> NodeRegisterEvent:
    return NodeRegisterEvent(
        node_id=node_id, conn_id="c", gateway_id="gw", sent_at_ms=1, ttl_ms=3000,
        region=region, gpu_tier="a100", lang_sets=[["en", "zh"]], capacity=2, services={},
    )  # fmt: skip


async def test_a_batch_is_split_by_cell_and_every_cell_gets_its_part() -> None:
    r, rec = router("eu=eu,us=us,*=main")
    batch = HeartbeatBatch(
        gateway_id="gw", sent_at_ms=5, seq=7, covers_ms=4,
        beats=[beat("a", "eu"), beat("b", None), beat("c", "us"), beat("d", "eu")],
    )  # fmt: skip
    await r(batch, None)  # type: ignore[arg-type]
    parts = {cell: recorder.calls for cell, recorder in rec.items()}
    ids = {
        cell: [b.node_id for _, part in calls for b in part.beats] for cell, calls in parts.items()
    }
    assert ids == {"eu": ["a", "d"], "us": ["c"], "main": ["b"]}  # None: the default cell
    for calls in parts.values():  # each part keeps the batch's sequence and watermark
        ((kind, part),) = calls
        assert (kind, part.seq, part.covers_ms, part.gateway_id) == ("heartbeats", 7, 4, "gw")


async def test_an_empty_batch_still_reaches_every_cell() -> None:
    r, rec = router("eu=eu,us=us")
    await r(HeartbeatBatch(gateway_id="gw", sent_at_ms=5, seq=8, covers_ms=5, beats=[]), None)  # type: ignore[arg-type]
    assert {c: len(x.calls) for c, x in rec.items()} == {"eu": 1, "us": 1, "main": 1}


async def test_beats_of_an_unknown_cell_are_counted_and_the_rest_applied() -> None:
    r, rec = router("eu=eu,us=us")
    batch = HeartbeatBatch(
        gateway_id="gw", sent_at_ms=5, beats=[beat("a", "mars"), beat("b", "us")]
    )
    await r(batch, None)  # type: ignore[arg-type]
    assert [b.node_id for _, p in rec["us"].calls for b in p.beats] == ["b"]
    assert r.metrics.heartbeats.labels("unknown_cell")._value.get() == 1


async def test_registrations_go_by_region_and_goodbyes_by_the_cell_they_name() -> None:
    r, rec = router("eu=eu,us=us,*=main")
    await r(registration("n-us", "us"), None)  # type: ignore[arg-type]
    await r(registration("n-jp", "jp"), None)  # type: ignore[arg-type]
    bye = NodeDisconnected(node_id="n-us", conn_id="c", gateway_id="gw", graceful=True, ts_ms=1)
    await r(bye.model_copy(update={"cell": "us"}), None)  # type: ignore[arg-type]
    await r(bye, None)  # type: ignore[arg-type]
    assert rec["us"].calls == [("register", "n-us"), ("disconnected", "n-us")]
    assert rec["main"].calls == [("register", "n-jp"), ("disconnected", "n-us")]
    with pytest.raises(UnknownCell):
        await r(bye.model_copy(update={"cell": "mars"}), None)  # type: ignore[arg-type]
