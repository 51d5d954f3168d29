"""A fake gateway for the node agent's tests: a real WebSocket server on 127.0.0.1:0.

It speaks the gateway side of docs/protocol.md just enough to drive the agent (ack or refuse
registrations, push controls and jobs, drop or close connections) and records every frame
the agent sends, so the tests assert on what actually crossed the wire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from lingua_node_agent import AgentConfig, JobContext, JobOutcome, NodeAgent
from lingua_shared.protocol import JobAssign

RegisterReply = Callable[[dict[str, Any], int], dict[str, Any] | None]


@dataclass
class Frame:
    conn: int
    msg: dict[str, Any]
    at: float


@dataclass
class FakeGateway:
    url: str = ""
    ack_interval_ms: int | None = None
    frames: list[Frame] = field(default_factory=list)
    conns: list[ServerConnection] = field(default_factory=list)
    close_codes: dict[int, int | None] = field(default_factory=dict)
    register_reply: RegisterReply | None = None
    _assigned: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def default_reply(self, msg: dict[str, Any], conn: int) -> dict[str, Any]:
        node_id = msg.get("node_id")
        if not node_id:
            self._assigned += 1
            node_id = f"gw-{self._assigned}"
        ack: dict[str, Any] = {"type": "node_register_ack", "node_id": node_id,
                               "message": "ok", "status": "ready"}  # fmt: skip
        if self.ack_interval_ms is not None:
            ack["heartbeat_interval_ms"] = self.ack_interval_ms
        return ack

    async def handler(self, ws: ServerConnection) -> None:
        conn = len(self.conns)
        self.conns.append(ws)
        loop = asyncio.get_running_loop()
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "node_register":
                    reply = (self.register_reply or self.default_reply)(msg, conn)
                    if reply is not None:
                        await ws.send(json.dumps(reply))
                async with self._changed:
                    self.frames.append(Frame(conn, msg, loop.time()))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            rcvd = ws.protocol.close_rcvd
            self.close_codes[conn] = rcvd.code if rcvd is not None else None
            async with self._changed:
                self._changed.notify_all()

    # -- waiting helpers ------------------------------------------------------------------

    def of_type(self, mtype: str, conn: int | None = None) -> list[Frame]:
        return [
            f for f in self.frames
            if f.msg.get("type") == mtype and (conn is None or f.conn == conn)
        ]  # fmt: skip

    async def wait_for(self, predicate: Callable[[], Any], limit_s: float = 3.0) -> Any:
        """Wait until ``predicate()`` is truthy, re-checking on each frame or close."""
        async with asyncio.timeout(limit_s), self._changed:
            while not (result := predicate()):
                await self._changed.wait()
            return result

    async def nth(self, mtype: str, n: int = 1, conn: int | None = None, **fields: Any) -> Frame:
        """The ``n``-th frame (1-based) of ``mtype`` matching ``fields``, waiting for it."""

        def find() -> Frame | None:
            hits = [f for f in self.of_type(mtype, conn)
                    if all(f.msg.get(k) == v for k, v in fields.items())]  # fmt: skip
            return hits[n - 1] if len(hits) >= n else None

        return await self.wait_for(find)

    async def closed(self, conn: int, limit_s: float = 3.0) -> int | None:
        """The close code the agent sent on connection ``conn`` (None: no close frame)."""
        await self.wait_for(lambda: conn in self.close_codes, limit_s)
        return self.close_codes[conn]

    async def send(self, msg: dict[str, Any] | str | bytes, conn: int = -1) -> None:
        await self.conns[conn].send(msg if isinstance(msg, str | bytes) else json.dumps(msg))


async def _serve_fake() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    async with serve(gw.handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gw.url = f"ws://127.0.0.1:{port}/ws/node"
        yield gw


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    async for gw in _serve_fake():
        yield gw


@pytest.fixture
async def gateway_b() -> AsyncIterator[FakeGateway]:
    """A second replica, for agents given a list of gateway URLs."""
    async for gw in _serve_fake():
        yield gw


class GatedHandler:
    """Holds every job until ``gate`` is set; records jobs; can emit a partial or raise."""

    def __init__(self, partial: str | None = None, fail: Exception | None = None) -> None:
        self.gate = asyncio.Event()
        self.jobs: list[JobAssign] = []
        self.partial = partial
        self.fail = fail

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        self.jobs.append(job)
        if self.partial is not None:
            await ctx.partial(self.partial, is_final=False)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return JobOutcome(text_asr=f"asr {job.utterance_index}", text_translated="translated")


@dataclass
class Started:
    agent: NodeAgent
    task: asyncio.Task[None]


@pytest.fixture
async def start_agent(gateway: FakeGateway) -> AsyncIterator[Callable[..., Started]]:
    """Start agents against the fake gateway; stops and awaits all of them at teardown."""
    started: list[Started] = []

    def start(handler: Any = None, **overrides: Any) -> Started:
        settings: dict[str, Any] = {"gateway": gateway.url, "heartbeat_interval_ms": 100,
                                    "backoff_cap_s": 0.5, "log_level": "debug"}  # fmt: skip
        settings.update(overrides)
        agent = NodeAgent(AgentConfig(**settings), handler)
        run = Started(agent, asyncio.create_task(agent.run()))
        started.append(run)
        return run

    yield start
    for run in started:
        run.agent.stop(drain=False)
    for run in started:
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(run.task, return_exceptions=True)
        except TimeoutError:  # pragma: no cover - shows up as a failure below
            run.task.cancel()
            pytest.fail("an agent did not stop within 5 s")


@pytest.fixture
def gated() -> type[GatedHandler]:
    """The :class:`GatedHandler` class (test modules cannot import from conftest)."""
    return GatedHandler
