"""Clients of ``/ws/session``.

``open_session`` / ``send_utterance`` / ``answers``: a one-way PCM session, an utterance as
two ``audio_chunk`` messages (the audio, then the empty final one), and the answers that come
back. ``init_session`` sends a ``session_init`` of any fields on an open connection.

``WebClient`` opens and feeds a session the way lingua's web client does (seen on the wire):
a two-way ``session_init`` (``src_lang: "auto"``, ``auto_langs``, ``tenant_id: null``, ...), one
``audio_chunk`` of 13 Opus packets about every 256 ms, an empty final chunk, never an
``utterance_index``. It records every message; ``alerts`` are the ``error`` messages, each of
which the real client shows as a modal alert.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from lingua_shared.protocol.webclient import CHUNK_INTERVAL_S, opus_chunk, session_init

PCM = b"\x01\x00" * 1600  # 100 ms of PCM16 at 16 kHz
ANSWER_TYPES = ("translation_result", "missing_result", "error")  # what answers an utterance
# the fields every session_init carries (a test's fields replace them)
MINIMAL_INIT = {
    "type": "session_init",
    "client_version": "it",
    "platform": "test",
    "src_lang": "zh",
    "tgt_lang": "en",
}


def session_url(stack: Any, gw: str = "gw-b") -> str:
    """Where clients connect: ``gw``'s /ws/session (gw-b, when nodes are on gw-a)."""
    return stack.gateway_url(gw).replace("/ws/node", "/ws/session")


def audio_chunk(sid: str, seq: int, audio: bytes = b"", final: bool = False) -> str:
    """One ``audio_chunk`` message (an empty final one ends the utterance)."""
    return json.dumps(
        {
            "type": "audio_chunk",
            "session_id": sid,
            "seq": seq,
            "is_final": final,
            "payload": base64.b64encode(audio).decode(),
        }
    )


async def init_session(ws: ClientConnection, timeout: float = 5.0, **fields: Any) -> dict:
    """Send a ``session_init`` (``MINIMAL_INIT`` with ``fields`` over it) on ``ws``; its ack."""
    await ws.send(json.dumps({**MINIMAL_INIT, **fields}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert ack["type"] == "session_init_ack", ack
    return ack


async def open_session(
    url: str,
    src: str = "zh",
    tgt: str = "en",
    delivery: str = "ordered",
    *,
    client_version: str = "it",
    timeout: float = 5.0,
    region: str | None = None,
    **connect_kw: Any,
) -> tuple[ClientConnection, str]:
    """A new connection with a one-way PCM session on it, results in ``delivery`` order
    (``region``: the session's, when given); the connection and the session id."""
    ws = await connect(url, **connect_kw)
    ack = await init_session(
        ws,
        timeout,
        client_version=client_version,
        mode="one_way",
        src_lang=src,
        tgt_lang=tgt,
        audio_format="pcm16",
        result_delivery=delivery,
        **({"region": region} if region is not None else {}),
    )
    return ws, ack["session_id"]


async def send_utterance(ws: ClientConnection, sid: str, seq: int, audio: bytes = PCM) -> None:
    """One utterance: ``audio`` as chunk ``seq``, then the empty final chunk ``seq + 1``."""
    await ws.send(audio_chunk(sid, seq, audio))
    await ws.send(audio_chunk(sid, seq + 1, final=True))


async def answers(
    ws: ClientConnection, count: int, timeout: float = 15, events: list[dict] | None = None
) -> list[dict]:
    """The next ``count`` messages that answer an utterance (result, missing, error);
    ``ui_event`` messages seen meanwhile go to ``events``."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        msg = json.loads(raw)
        if msg["type"] in ANSWER_TYPES:
            out.append(msg)
        elif msg["type"] == "ui_event" and events is not None:
            events.append(msg)
    return out


# -- lingua's web client -------------------------------------------------------------------
class WebClient:
    """A session opened and fed as lingua's web client does (see the module's docstring)."""

    def __init__(self, url: str, lang_a: str = "zh", lang_b: str = "en", **init: Any) -> None:
        self.url = url
        self.init = session_init(lang_a, lang_b, **init)
        self.ws: ClientConnection | None = None
        self.session_id = ""
        self.seq = 0
        self.messages: list[tuple[float, dict[str, Any]]] = []  # (monotonic time, message)
        self._reader: asyncio.Task[None] | None = None
        self._rng = random.Random(7)
        self._changed = asyncio.Event()

    async def __aenter__(self) -> WebClient:
        self.ws = await connect(self.url)
        ack = await init_session(self.ws, timeout=10, **self.init)
        self.session_id = ack["session_id"]
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            self.messages.append((time.monotonic(), json.loads(raw)))
            self._changed.set()

    async def speak(self, seconds: float = 1.0, interval: float = CHUNK_INTERVAL_S) -> None:
        """One utterance: a chunk per ``interval`` for ``seconds`` of audio, then the empty
        final chunk (the web client's end of an utterance)."""
        assert self.ws is not None
        for _ in range(max(1, round(seconds / CHUNK_INTERVAL_S))):
            await self._chunk(opus_chunk(self._rng))
            await asyncio.sleep(interval)
        await self._chunk(b"", final=True)

    async def silence(self) -> None:
        """The one-chunk utterance of digital silence its voice detection sends after a
        sentence."""
        await self._chunk(opus_chunk(self._rng, silent=True))
        await self._chunk(b"", final=True)

    async def _chunk(self, audio: bytes, final: bool = False) -> None:
        assert self.ws is not None
        msg = audio_chunk(self.session_id, self.seq, audio, final)
        self.seq += 1
        await self.ws.send(msg)

    # -- what arrived ---------------------------------------------------------------------
    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m["type"] == kind]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """``error`` messages: each one is a modal alert in lingua's web client."""
        return self.of_type("error")

    def answer(self, index: int) -> tuple[float, dict[str, Any]] | None:
        """When and how utterance ``index`` was answered (result or missing_result)."""
        for t, m in self.messages:
            kind_ok = m["type"] in ("translation_result", "missing_result")
            if kind_ok and m.get("utterance_index") == index:
                return t, m
        return None

    async def wait_for(
        self, done: Callable[[WebClient], bool], timeout: float = 15.0, what: str = "messages"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = [m for _, m in self.messages]
                raise AssertionError(f"timed out waiting for {what}; received {got}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def answered(self, *indices: int, timeout: float = 15.0) -> None:
        await self.wait_for(
            lambda c: all(c.answer(i) is not None for i in indices),
            timeout,
            f"answers to {indices}",
        )
