"""Clients that behave as lingua_1's real ones, for the integration tests.

``WebClient`` opens and feeds a session the way lingua's web client does (seen on the wire):
a two-way ``session_init`` (``src_lang: "auto"``, ``auto_langs``, ``tenant_id: null``, ...), one
``audio_chunk`` of 13 Opus packets about every 256 ms, an empty final chunk, never an
``utterance_index``. It records every message; ``alerts`` are the ``error`` messages, each of
which the real client shows as a modal alert. ``lingua_node`` builds our node agent in its
``lingua`` profile (no acks, no ``node_control``, one reconnect, a 1005 goodbye).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from lingua_node_agent import AgentConfig, JobContext, JobOutcome, NodeAgent
from lingua_shared.protocol import JobAssign

CHUNK_INTERVAL_S = 0.256  # lingua's web client sends a chunk about this often
PACKETS_PER_CHUNK = 13  # 20 ms Opus packets per chunk


def opus_chunk(rng: random.Random, silent: bool = False) -> bytes:
    """One chunk as the web client sends it: ``[u16 LE length][packet]`` x 13; speech packets
    of 40-80 bytes (600-1,000 bytes a chunk), digital silence of 8 bytes a packet."""
    out = bytearray()
    for _ in range(PACKETS_PER_CHUNK):
        size = 8 if silent else rng.randint(40, 80)
        out += struct.pack("<H", size) + rng.randbytes(size)
    return bytes(out)


class WebClient:
    def __init__(self, url: str, lang_a: str = "zh", lang_b: str = "en", **init: Any) -> None:
        self.url = url
        self.init = {
            "type": "session_init",
            "client_version": "web-client-v1.0",
            "platform": "web",
            "src_lang": "auto",
            "tgt_lang": lang_b,
            "dialect": None,
            "features": {},
            "pairing_code": None,
            "mode": "two_way_auto",
            "lang_a": lang_a,
            "lang_b": lang_b,
            "auto_langs": [lang_a, lang_b],
            "trace_id": str(uuid.uuid4()),
            "tenant_id": None,
            **init,
        }
        self.ws: ClientConnection | None = None
        self.session_id = ""
        self.seq = 0
        self.messages: list[tuple[float, dict[str, Any]]] = []  # (monotonic time, message)
        self._reader: asyncio.Task[None] | None = None
        self._rng = random.Random(7)
        self._changed = asyncio.Event()

    async def __aenter__(self) -> WebClient:
        self.ws = await connect(self.url)
        await self.ws.send(json.dumps(self.init))
        ack = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert ack["type"] == "session_init_ack", ack
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
        msg = {
            "type": "audio_chunk",
            "session_id": self.session_id,
            "seq": self.seq,
            "is_final": final,
            "payload": base64.b64encode(audio).decode(),
        }
        self.seq += 1
        await self.ws.send(json.dumps(msg))

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


class ScriptedHandler:
    """A node's engine for the tests: each job takes ``delay_s`` and its text is
    ``texts(index)``; records when each job started and finished."""

    def __init__(self, delay_s: float = 0.2, texts: Callable[[int], str] | None = None) -> None:
        self.delay_s = delay_s
        self.texts = texts or (lambda i: f"utterance {i}")
        self.calls: list[int] = []
        self.finished: dict[int, float] = {}
        self.started = asyncio.Event()

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        self.calls.append(job.utterance_index)
        self.started.set()
        await asyncio.sleep(self.delay_s)
        self.finished[job.utterance_index] = time.monotonic()
        text = self.texts(job.utterance_index)
        return JobOutcome(text_asr=text, text_translated=f"[en] {text}")


def lingua_node(gateway_url: str, node_id: str, handler: Any, **over: Any) -> NodeAgent:
    """Our agent as lingua's: no acks, ignores node_control and errors, one reconnect."""
    cfg: dict[str, Any] = {
        "gateway": gateway_url,
        "node_id": node_id,
        "profile": "lingua",
        "asr_langs": ["en", "zh"],
        "semantic_langs": ["en", "zh"],
        "tts_langs": ["en", "zh"],
        "heartbeat_interval_ms": 1000,  # lingua beats every 15 s; the tests cannot wait so long
        "reconnect_delay_s": 1.0,  # lingua waits 5 s
    }
    cfg.update(over)
    return NodeAgent(AgentConfig(**cfg), handler)
