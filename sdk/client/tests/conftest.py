"""A fake gateway for the client's tests: a real WebSocket server on 127.0.0.1:0.

It plays the gateway side of ``/ws/session`` (docs/protocol.md) just enough to drive the client:
it acks ``session_init``, numbers utterances from 0 per connection (one per final frame or
``utterance`` message, as the real gateway does), reassembles each utterance's audio from
whatever encoding the client used, and answers through a per-test policy that can delay,
reorder, drop or duplicate answers. Every frame received is recorded, decoded, so tests
assert on what actually crossed the wire.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from lingua_shared.protocol.session import BinaryFrame, parse_binary_frame

# (delay in seconds, message) pairs to send for one utterance
Answer = list[tuple[float, dict[str, Any]]]
Policy = Callable[[str, int, bytes], Answer]


def translation(session_id: str, index: int, audio: bytes) -> dict[str, Any]:
    return {"type": "translation_result", "session_id": session_id, "utterance_index": index,
            "job_id": f"job-{index}", "text_asr": f"heard {len(audio)} bytes",
            "text_translated": f"译文 {index}", "tts_audio": "", "tts_format": "opus",
            "trace_id": "t"}  # fmt: skip


def answer_all(session_id: str, index: int, audio: bytes) -> Answer:
    return [(0.0, translation(session_id, index, audio))]


@dataclass
class Conn:
    ws: ServerConnection
    session_id: str | None = None
    init: dict[str, Any] | None = None
    frames: list[dict[str, Any] | BinaryFrame] = field(default_factory=list)
    utterances: list[bytes] = field(default_factory=list)
    current: bytearray = field(default_factory=bytearray)
    close_code: int | None = None


@dataclass
class FakeGateway:
    url: str = ""
    policy: Policy = answer_all
    init_reply: Callable[[dict[str, Any], int], dict[str, Any] | None] | None = None
    ack_close: bool = True  # answer session_close with session_close_ack
    drop_after: int | None = None  # abort the connection after this many utterances
    conns: list[Conn] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    translation = staticmethod(translation)

    def default_init_reply(self, msg: dict[str, Any], n: int) -> dict[str, Any]:
        return {"type": "session_init_ack", "session_id": f"s-test-{n}", "message": "ok",
                "trace_id": msg.get("trace_id"), "use_binary_frame": False,
                "negotiated_audio_format": msg.get("audio_format") or "opus",
                "negotiated_sample_rate": 16000}  # fmt: skip

    async def handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws)
        self.conns.append(conn)
        try:
            async for raw in ws:
                await self.on_frame(conn, raw)
                async with self.changed:
                    self.changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            rcvd = ws.protocol.close_rcvd
            conn.close_code = rcvd.code if rcvd is not None else None
            async with self.changed:
                self.changed.notify_all()

    async def on_frame(self, conn: Conn, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            frame = parse_binary_frame(raw)
            conn.frames.append(frame)
            conn.current += frame.audio
            if frame.is_final:
                await self.end_utterance(conn)
            return
        msg = json.loads(raw)
        conn.frames.append(msg)
        kind = msg.get("type")
        if kind == "session_init":
            conn.init = msg
            reply = (self.init_reply or self.default_init_reply)(msg, len(self.conns) - 1)
            if reply is not None:
                conn.session_id = reply.get("session_id")
                await conn.ws.send(json.dumps(reply))
        elif kind == "audio_chunk":
            conn.current += base64.b64decode(msg.get("payload") or "")
            if msg.get("is_final"):
                await self.end_utterance(conn)
        elif kind == "utterance":
            conn.current += base64.b64decode(msg["audio"])
            await self.end_utterance(conn)
        elif kind == "client_heartbeat":
            beat = {"type": "server_heartbeat", "session_id": conn.session_id, "timestamp": 1}
            await conn.ws.send(json.dumps(beat))
        elif kind == "session_close" and self.ack_close:
            ack = {"type": "session_close_ack", "session_id": conn.session_id, "reason": "bye"}
            await conn.ws.send(json.dumps(ack))
            await conn.ws.close(1000, "session closed")

    async def end_utterance(self, conn: Conn) -> None:
        if not conn.current:
            return  # like the real gateway: an empty final consumes no index
        index = len(conn.utterances)
        audio = bytes(conn.current)
        conn.utterances.append(audio)
        conn.current.clear()
        if self.drop_after is not None and len(conn.utterances) >= self.drop_after:
            conn.ws.transport.abort()  # no close frame: an abnormal drop
            return
        for delay, msg in self.policy(conn.session_id or "", index, audio):
            task = asyncio.create_task(self.send_later(conn, delay, msg))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def send_later(self, conn: Conn, delay: float, msg: dict[str, Any]) -> None:
        await asyncio.sleep(delay)
        try:
            await conn.ws.send(json.dumps(msg))
        except ConnectionClosed:
            pass

    async def wait_for(self, predicate: Callable[[], Any], limit_s: float = 3.0) -> Any:
        async with asyncio.timeout(limit_s), self.changed:
            while not (result := predicate()):
                await self.changed.wait()
            return result

    def of_type(self, kind: str, conn: int = 0) -> list[dict[str, Any]]:
        return [f for f in self.conns[conn].frames if isinstance(f, dict) and f["type"] == kind]


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    async with serve(gw.handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gw.url = f"ws://127.0.0.1:{port}/ws/session"
        yield gw
        for task in list(gw.tasks):
            task.cancel()
        await asyncio.gather(*gw.tasks, return_exceptions=True)
