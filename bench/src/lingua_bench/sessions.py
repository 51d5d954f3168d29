"""Client sessions on raw WebSockets: open, send utterances, time what comes back.

An utterance is one ``audio_chunk`` carrying its audio with ``is_final: true``: the moment
that frame is handed to the socket is "utterance end at the client", the start of both the
dispatch and the round-trip latency. Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC is
system-wide on Linux, so they compare across processes of this host) plus a wall-clock copy
to line up with the millisecond stamps the services write on job records.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

# (session, utterance index, message, monotonic ns at receipt)
ResultHook = Callable[["BenchSession", int, dict[str, Any], int], None]


async def open_session(url: str, init: dict[str, Any]) -> tuple[ClientConnection, str]:
    """Open a client session: connect, send ``init``, wait for its ``session_init_ack``;
    the socket and the session id (a refusal closes the socket and raises)."""
    ws = await connect(url, compression=None, ping_interval=None, max_size=2**22)
    await ws.send(orjson.dumps(init).decode())
    ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
    if ack.get("type") != "session_init_ack":
        await ws.close()
        raise RuntimeError(f"session_init refused: {ack}")
    return ws, ack["session_id"]


class BenchSession:
    """One session on its own connection (one session per connection, as the gateway wants)."""

    def __init__(self, url: str, src: str, tgt: str, audio: bytes, on_result: ResultHook) -> None:
        self.url = url
        self.src, self.tgt = src, tgt
        self.payload = base64.b64encode(audio).decode()
        self.on_result = on_result
        self.ws: ClientConnection | None = None
        self.session_id = ""
        self.next_index = 0
        self.seq = 0
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def open(self) -> None:
        init = {
            "type": "session_init",
            "client_version": "lingua-bench",
            "platform": "bench",
            "mode": "one_way",
            "src_lang": self.src,
            "tgt_lang": self.tgt,
            "audio_format": "pcm16",
        }
        ws, self.session_id = await open_session(self.url, init)
        self.ws = ws
        self.task = asyncio.create_task(self._receive(ws))

    def utterance_frame(self) -> tuple[int, str]:
        """The next whole utterance as one final ``audio_chunk``: (its index, the frame).
        The caller stamps the time and registers the utterance before sending, so an answer
        can never arrive before it is expected."""
        index = self.next_index
        self.next_index += 1
        self.seq += 1
        frame = (
            f'{{"type":"audio_chunk","session_id":"{self.session_id}","seq":{self.seq},'
            f'"is_final":true,"payload":"{self.payload}"}}'
        )
        return index, frame

    async def _receive(self, ws: ClientConnection) -> None:
        loads = orjson.loads
        try:
            async for raw in ws:
                t_ns = time.monotonic_ns()
                msg = loads(raw)
                idx = msg.get("utterance_index")
                if isinstance(idx, int):
                    self.on_result(self, idx, msg, t_ns)
                elif msg.get("type") == "error":
                    # an error without an index (rate, size): the hook sees it under -1
                    self.on_result(self, -1, msg, t_ns)
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            try:
                await self.ws.close(1000, "bench done")
            except OSError:
                pass
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
