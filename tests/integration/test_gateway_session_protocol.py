"""/ws/session (and the job messages of /ws/node) against a real gateway process: sessions,
utterance numbering and cutting, job requests on the bus, ordered delivery, typed errors.

No dispatcher runs here: the tests read what the gateway publishes from their own queue bound
to the events exchange, and play the dispatcher by publishing ``ToSession`` themselves.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from lingua_shared.bus import Topology, encode
from lingua_shared.events import DISPATCHER_EVENT, JobRequest, NodeJobEvent, ToSession
from lingua_shared.protocol.session import (
    FRAME_AUDIO,
    FRAME_FINAL,
    FRAME_PING,
    FRAME_PONG,
    BinaryFrame,
    build_binary_frame,
    parse_binary_frame,
)
from tests.support.helpers import eventually, register_frame
from tests.support.sessions import PCM, audio_chunk, init_session, session_url

pytestmark = pytest.mark.integration


class BusTap:
    """The test's own exclusive queue on the events exchange: what the gateway published."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue

    async def next(self, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self.queue.get(no_ack=True, fail=False)
            if message is not None:
                return DISPATCHER_EVENT.validate_json(message.body)
            await asyncio.sleep(0.02)
        raise AssertionError(f"nothing published within {timeout}s")

    async def requests(self, count: int) -> list[JobRequest]:
        out = [await self.next() for _ in range(count)]
        assert all(isinstance(r, JobRequest) for r in out), out
        return out

    async def nothing(self, wait: float = 0.3) -> None:
        await asyncio.sleep(wait)
        message = await self.queue.get(no_ack=True, fail=False)
        assert message is None, DISPATCHER_EVENT.validate_json(message.body)


@pytest.fixture
async def bus(stack, amqp_url: str, bus_prefix: str) -> AsyncIterator[tuple[BusTap, Any]]:
    topo = Topology(bus_prefix)
    conn = await aio_pika.connect(amqp_url, timeout=5)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True)
        for key in ("job.request", "job.node_event"):
            await queue.bind(topo.events, routing_key=key)
        deliver = await channel.get_exchange(topo.deliver)
        yield BusTap(queue), deliver
        # no dispatcher runs here: leave nothing in its queue for later tests' dispatchers
        await (await channel.get_queue(topo.dispatcher_queue)).purge()
    finally:
        await conn.close()


async def recv(ws: ClientConnection, timeout: float = 5.0) -> Any:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return parse_binary_frame(raw) if isinstance(raw, bytes) else json.loads(raw)


async def send(ws: ClientConnection, **msg: Any) -> None:
    await ws.send(json.dumps(msg))


def frame(ftype: int, sid: str, audio: bytes = b"", seq: int = 0, final: bool = False) -> bytes:
    return build_binary_frame(BinaryFrame(ftype, sid, seq, 99, final, audio))


def opus(n: int, start: int = 0) -> bytes:
    """``n`` Opus-framed packets of 40 bytes (speech-sized: a packet of a few bytes is
    digital silence, which the gateway answers without a job)."""
    return b"".join(struct.pack("<H", 40) + bytes([(start + k) % 256]) * 40 for k in range(n))


async def record(redis, stack, sid: str) -> dict[str, str]:
    raw = await redis.hgetall(stack.keys.session(sid))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_sessions_one_way_and_two_way_are_acked_and_recorded(stack, redis, bus):
    async with connect(session_url(stack, "gw-a")) as ws:
        ack = await init_session(ws, mode="one_way", audio_format="pcm16", trace_id="trace-1")
        sid = ack["session_id"]
        assert sid.startswith("s-") and len(sid) == 18
        assert ack["trace_id"] == "trace-1" and ack["use_binary_frame"] is False
        assert ack["negotiated_audio_format"] == "pcm16" and ack["negotiated_sample_rate"] == 16000
        rec = await record(redis, stack, sid)
        assert rec == {
            **rec,
            "gateway_id": "gw-a",
            "mode": "one_way",
            "src_lang": "zh",
            "tgt_lang": "en",
            "lang_a": "",
            "audio_format": "pcm16",
            "sample_rate": "16000",
            "next_deliver": "0",
        }
        assert len(rec["conn_id"]) == 32 and int(rec["created_at_ms"]) > 0
        assert 590_000 < await redis.pttl(stack.keys.session(sid)) <= 600_000
    async with connect(session_url(stack, "gw-a")) as ws:  # as lingua's web client opens one
        ack = await init_session(
            ws,
            mode="two_way_auto",
            src_lang="auto",
            tgt_lang="en",
            lang_a="zh",
            lang_b="en",
            auto_langs=["zh", "en"],
            tenant_id=None,
            trace_id="5b1f7c1e-0d0a-4b8e-9a59-0c1b2f3e4d5a",
        )
        assert ack["negotiated_audio_format"] == "opus" and ack["negotiated_codec"] == "opus"
        rec = await record(redis, stack, ack["session_id"])
        assert (rec["mode"], rec["src_lang"], rec["lang_a"], rec["lang_b"]) == (
            "two_way_auto",
            "auto",
            "zh",
            "en",
        )


async def test_invalid_inits_and_early_messages_get_typed_errors_and_the_connection_stays_open(
    stack, redis, bus
):
    async with connect(session_url(stack, "gw-a")) as ws:
        await ws.send(audio_chunk("s-0123456789abcdef", 0, PCM, final=True))
        assert (await recv(ws))["code"] == "INVALID_SESSION"
        await send(ws, type="client_heartbeat", timestamp=1)
        hb = await recv(ws)
        assert hb["type"] == "server_heartbeat" and hb["session_id"] == ""
        cases = [
            ({"src_lang": "auto", "tgt_lang": "en"}, "INVALID_MESSAGE"),
            ({"src_lang": "zh", "tgt_lang": "x1"}, "INVALID_MESSAGE"),
            ({"mode": "two_way_auto", "lang_a": "zh", "lang_b": "zh"}, "INVALID_MESSAGE"),
            ({"mode": "two_way_auto", "lang_a": "zh"}, "INVALID_MESSAGE"),
            ({"mode": "broadcast", "src_lang": "zh", "tgt_lang": "en"}, "UNSUPPORTED_FEATURE"),
            ({"src_lang": 5, "tgt_lang": "en"}, "INVALID_MESSAGE"),
        ]
        for fields, code in cases:
            await send(ws, type="session_init", **fields)
            err = await recv(ws)
            assert err["type"] == "error" and err["code"] == code, (fields, err)
        await ws.send("{not json")
        assert (await recv(ws))["code"] == "INVALID_MESSAGE"
        sid = (await init_session(ws))["session_id"]
        await send(ws, type="session_init", src_lang="zh", tgt_lang="en")
        err = await recv(ws)
        assert err["code"] == "INVALID_MESSAGE" and "one session per connection" in err["message"]
        assert await redis.exists(stack.keys.session(sid))
    await bus[0].nothing()


async def test_chunks_and_binary_frames_become_job_requests_numbered_in_order(stack, redis, bus):
    tap, _ = bus
    async with connect(session_url(stack, "gw-a")) as ws:
        ack = await init_session(ws, audio_format="pcm16")
        sid = ack["session_id"]
        a, b, c, d = (bytes([i, 0]) * 800 for i in range(1, 5))
        await ws.send(audio_chunk(sid, 0, a))  # utterance 0: two JSON chunks and an empty final
        await ws.send(audio_chunk(sid, 1, b))
        await ws.send(audio_chunk(sid, 2, final=True))
        await ws.send(audio_chunk(sid, 3, final=True))  # empty utterance: no job, no index
        await ws.send(frame(FRAME_AUDIO, sid, c, seq=4))  # utterance 1: binary audio + final
        await ws.send(frame(FRAME_FINAL, sid, seq=5))
        await ws.send(frame(FRAME_AUDIO, "", d, seq=6, final=True))  # utterance 2
        reqs = await tap.requests(3)
        conn_id = (await record(redis, stack, sid))["conn_id"]
        assert [r.utterance_index for r in reqs] == [0, 1, 2]
        assert [base64.b64decode(r.audio) for r in reqs] == [a + b, c, d]
        for r in reqs:
            assert r.request_key == f"{sid}:{r.utterance_index}" and r.session_id == sid
            assert (r.gateway_id, r.conn_id, r.trace_id) == ("gw-a", conn_id, ack["trace_id"])
            assert (r.mode, r.src_lang, r.tgt_lang) == ("one_way", "zh", "en")
            assert (r.audio_format, r.sample_rate) == ("pcm16", 16000)
            assert r.pipeline == {"use_asr": True, "use_nmt": True, "use_tts": True}
        # a bad chunk is refused, the connection stays useful
        await send(ws, type="audio_chunk", session_id=sid, seq=7, payload="@@not base64@@")
        err = await recv(ws)
        assert err["code"] == "INVALID_MESSAGE" and "base64" in err["message"]
        await ws.send(audio_chunk(sid, 8, PCM, final=True))
        (req,) = await tap.requests(1)
        assert req.utterance_index == 3 and base64.b64decode(req.audio) == PCM


async def test_an_opus_stream_longer_than_the_maximum_is_cut_between_packets(stack, bus):
    tap, _ = bus
    async with connect(session_url(stack, "gw-a")) as ws:
        ack = await init_session(ws, mode="two_way_auto", src_lang="auto", lang_a="zh", lang_b="en")
        sid = ack["session_id"]
        stream = opus(1300)  # 26 s of 20 ms packets; LINGUA_MAX_UTTERANCE_MS is 20 s
        step = 13 * 5  # 13 packets per chunk, as lingua's web client sends them
        for seq, i in enumerate(range(0, len(stream), step)):
            await ws.send(audio_chunk(sid, seq, stream[i : i + step]))
        await ws.send(audio_chunk(sid, 999, final=True))
        first, second = await tap.requests(2)
        assert (first.utterance_index, second.utterance_index) == (0, 1)
        assert base64.b64decode(first.audio) == opus(1000)  # exactly 20 s, bytes untouched
        assert base64.b64decode(second.audio) == opus(300, start=1000)
        assert first.audio_format == "opus" and first.mode == "two_way_auto"
        assert (first.lang_a, first.lang_b, first.src_lang) == ("zh", "en", "auto")


async def test_whole_utterances_keep_their_index_and_request_id(stack, bus):
    tap, _ = bus
    async with connect(session_url(stack, "gw-a")) as ws:
        sid = (await init_session(ws, audio_format="pcm16"))["session_id"]
        audio = base64.b64encode(PCM).decode()
        await send(ws, type="utterance", session_id=sid, audio=audio, request_id="req-abc")
        await send(ws, type="utterance", session_id=sid, utterance_index=5, audio=audio)
        await ws.send(audio_chunk(sid, 0, PCM, final=True))
        # a retry of req-abc keeps its index 0 (the dispatcher absorbs the copy)
        await send(ws, type="utterance", session_id=sid, audio=audio, request_id="req-abc")
        reqs = await tap.requests(4)
        assert [(r.utterance_index, r.request_key) for r in reqs] == [
            (0, f"{sid}:r:req-abc"),  # client ids are namespaced by their session
            (5, f"{sid}:5"),
            (6, f"{sid}:6"),
            (0, f"{sid}:r:req-abc"),
        ]
        assert reqs[0].audio == audio  # forwarded as sent
        await send(ws, type="utterance", session_id=sid, audio="")
        assert (await recv(ws))["code"] == "INVALID_MESSAGE"


async def test_ping_heartbeat_and_close(stack, redis, bus):
    async with connect(session_url(stack, "gw-a")) as ws:
        sid = (await init_session(ws))["session_id"]
        await ws.send(frame(FRAME_PING, sid, seq=41))
        pong = await recv(ws)
        assert (pong.frame_type, pong.session_id, pong.seq, pong.timestamp) == (
            FRAME_PONG,
            sid,
            41,
            99,
        )
        await redis.pexpire(stack.keys.session(sid), 5_000)
        await asyncio.sleep(1.1)  # activity refreshes at most once per second (touch interval)
        await send(ws, type="client_heartbeat", session_id=sid, timestamp=123)
        hb = await recv(ws)
        assert hb["type"] == "server_heartbeat" and hb["session_id"] == sid
        assert abs(hb["timestamp"] - time.time() * 1000) < 5_000
        assert await redis.pttl(stack.keys.session(sid)) > 500_000  # refreshed
        await send(ws, type="session_close", session_id=sid, reason="bye")
        assert await recv(ws) == {"type": "session_close_ack", "session_id": sid, "reason": "bye"}
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    rec = await eventually(
        lambda: _unbound(redis, stack, sid), what="the session's binding removed"
    )
    assert rec["mode"] == "one_way" and rec["next_deliver"] == "0"


async def _unbound(redis, stack, sid):
    rec = await record(redis, stack, sid)
    return rec if "conn_id" not in rec and "gateway_id" not in rec else None


async def test_a_client_only_touches_its_own_session(stack, redis, bus):
    tap, _ = bus
    async with connect(session_url(stack, "gw-a")) as a, connect(session_url(stack, "gw-a")) as b:
        sid_a = (await init_session(a))["session_id"]
        sid_b = (await init_session(b))["session_id"]
        for msg in (
            audio_chunk(sid_b, 0, PCM, final=True),
            json.dumps({"type": "session_close", "session_id": sid_b}),
            json.dumps({"type": "client_heartbeat", "session_id": sid_b}),
            frame(FRAME_AUDIO, sid_b, PCM, final=True),
        ):
            await a.send(msg)
            err = await recv(a)
            assert err["type"] == "error" and err["code"] == "INVALID_SESSION", err
        await tap.nothing()
        assert (await record(redis, stack, sid_b))["gateway_id"] == "gw-a"
        await a.send(audio_chunk(sid_a, 1, PCM, final=True))
        (req,) = await tap.requests(1)
        assert req.session_id == sid_a


async def test_answers_reach_the_client_in_index_order_exactly_once(stack, redis, bus):
    _, deliver = bus
    async with connect(session_url(stack, "gw-a")) as ws:
        sid = (await init_session(ws, result_delivery="ordered"))["session_id"]
        conn_id = (await record(redis, stack, sid))["conn_id"]

        async def publish(index: int, ordered: bool = True, kind: str = "translation_result"):
            payload = {"type": kind, "session_id": sid, "utterance_index": index, "job_id": "j"}
            msg = ToSession(
                session_id=sid,
                conn_id=conn_id,
                utterance_index=index,
                ordered=ordered,
                payload=payload,
            )
            await deliver.publish(aio_pika.Message(encode(msg)), routing_key="gw-a")

        for index in (2, 0, 1, 1):
            await publish(index)
        await publish(7, ordered=False, kind="asr_partial")
        got = [await recv(ws) for _ in range(4)]
        assert [(m["type"], m["utterance_index"]) for m in got] == [
            ("translation_result", 0),
            ("translation_result", 1),
            ("translation_result", 2),
            ("asr_partial", 7),
        ]
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.3)  # the duplicate of 1 never arrives
        stale = ToSession(
            session_id=sid,
            conn_id="another-connection",
            utterance_index=3,
            payload={"type": "translation_result"},
        )
        await deliver.publish(aio_pika.Message(encode(stale)), routing_key="gw-a")
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.3)
    metrics = _metrics(stack)
    assert 'lingua_gateway_session_messages_dropped_total{reason="duplicate"} 1.0' in metrics
    assert 'lingua_gateway_session_messages_dropped_total{reason="not_held"} 1.0' in metrics


def _metrics(stack, name: str = "gw-a") -> str:
    with urllib.request.urlopen(f"{stack.procs[name].base_url}/metrics", timeout=5) as r:
        return r.read().decode()


async def test_node_job_messages_are_published_with_the_bound_node_id(stack, bus):
    tap, _ = bus
    async with connect(stack.gateway_url()) as node:
        await node.send(json.dumps({"type": "job_ack", "job_id": "j-1", "attempt_id": 1}))
        assert (await recv(node))["code"] == "NODE_NOT_REGISTERED"
        await node.send(register_frame("node-jobs"))
        assert (await recv(node))["type"] == "node_register_ack"
        ack = {"type": "job_ack", "job_id": "j-1", "attempt_id": 2, "session_id": "s-1"}
        await node.send(json.dumps(ack))
        result = {
            "type": "job_result",
            "job_id": "j-1",
            "attempt_id": 2,
            "node_id": "node-jobs",
            "session_id": "s-1",
            "utterance_index": 0,
            "success": True,
            "text_asr": "hi",
        }
        await node.send(json.dumps(result))
        ev_ack, ev_result = await tap.next(), await tap.next()
        assert isinstance(ev_ack, NodeJobEvent) and isinstance(ev_result, NodeJobEvent)
        assert (ev_ack.node_id, ev_ack.gateway_id) == ("node-jobs", "gw-a")
        assert ev_ack.message == {**ack, "attempt_id": 2}
        assert ev_result.message["text_asr"] == "hi" and ev_result.conn_id == ev_ack.conn_id
        forged = {**result, "node_id": "someone-else"}
        await node.send(json.dumps(forged))
        err = await recv(node)
        assert err["code"] == "INVALID_MESSAGE" and "someone-else" in err["message"]
        await tap.nothing()


async def test_session_limits_answer_message_too_large_and_keep_the_session(stack, bus):
    tap, _ = bus
    stack.start(
        "gw-lim",
        "gateway",
        LINGUA_WS_SESSION_MAX_FRAME_BYTES="20000",
        LINGUA_SESSION_BUFFER_BYTES="12000",
    ).wait_ready()
    async with connect(session_url(stack, "gw-lim")) as ws:
        sid = (await init_session(ws, audio_format="pcm16"))["session_id"]
        await ws.send(audio_chunk(sid, 0, b"\x00" * 16_000))  # ~21 kB of JSON
        err = await recv(ws)
        assert err["code"] == "MESSAGE_TOO_LARGE" and err["details"]["limit"] == 20000
        await ws.send(audio_chunk(sid, 1, b"\x01" * 8000))
        await ws.send(audio_chunk(sid, 2, b"\x02" * 8000))  # 16 kB buffered > 12 kB: cut
        err = await recv(ws)
        assert err["code"] == "MESSAGE_TOO_LARGE"
        await ws.send(audio_chunk(sid, 3, final=True))
        first, second = await tap.requests(2)
        assert base64.b64decode(first.audio) == b"\x01" * 8000
        assert base64.b64decode(second.audio) == b"\x02" * 8000
        assert (first.gateway_id, second.utterance_index) == ("gw-lim", 1)
