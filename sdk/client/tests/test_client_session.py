"""The SDK against the fake gateway: handshake, events and latencies, timeouts, closing."""

from __future__ import annotations

import asyncio

import pytest

from lingua_client import (
    AudioError,
    ClientError,
    ClientTimeout,
    ConnectError,
    ConnectionLost,
    ResultTimeout,
    SessionConfig,
    SessionRejected,
    connect_session,
    open_session,
    summarize,
)


def tone(n_ms: int, value: int) -> bytes:
    """``n_ms`` of a constant sample (distinct per utterance, so mix-ups show)."""
    return value.to_bytes(2, "little", signed=True) * (16 * n_ms)


def fast(**kw) -> SessionConfig:
    return SessionConfig.one_way("en", "zh", pace_ms=0, **kw)


async def test_events_have_the_right_indices_and_latencies_in_any_order(gateway):
    """Out of order (#0 answers last), a partial, a missing_result and an error per index."""

    def policy(sid, index, audio):
        if index == 0:
            partial = {"type": "asr_partial", "session_id": sid, "utterance_index": 0,
                       "job_id": "job-0", "text": "hea", "is_final": False}  # fmt: skip
            return [(0.0, partial), (0.3, gateway.translation(sid, 0, audio))]
        if index == 2:
            return [(0.05, {"type": "missing_result", "session_id": sid, "utterance_index": 2,
                            "reason": "gap_timeout", "created_at_ms": 5})]  # fmt: skip
        if index == 3:
            return [(0.0, {"type": "error", "code": "NO_AVAILABLE_NODE", "message": "none",
                           "details": {"utterance_index": 3}})]  # fmt: skip
        return [(0.0, gateway.translation(sid, index, audio))]

    gateway.policy = policy
    async with connect_session(gateway.url, fast()) as s:
        assert s.session_id == "s-test-0"
        indices = [await s.send_utterance(tone(120, 100 + i)) for i in range(5)]
        assert indices == [0, 1, 2, 3, 4]
        events = [ev async for ev in s.events(until_answered=True, timeout_s=3)]
    kinds = {(ev.utterance_index, ev.kind) for ev in events}
    assert kinds == {(0, "asr_partial"), (0, "translation_result"), (1, "translation_result"),
                     (2, "missing_result"), (3, "error"), (4, "translation_result")}  # fmt: skip
    answers = [ev for ev in events if ev.is_answer]
    order = [ev.utterance_index for ev in answers]
    assert order[-1] == 0 and sorted(order) == [0, 1, 2, 3, 4]
    assert all(ev.latency_ms is not None and ev.latency_ms >= 0 for ev in events)
    by_index = {ev.utterance_index: ev for ev in answers}
    assert by_index[0].latency_ms >= 250  # held 0.3 s by the fake after the final frame
    assert by_index[0].message.text_asr == f"heard {120 * 32} bytes"
    assert by_index[3].message.code == "NO_AVAILABLE_NODE"
    summary = summarize(s.tracker)
    assert (summary.sent, summary.results, summary.missing, summary.errors) == (5, 3, 1, 1)
    assert summary.exactly_once and not summary.all_translated


async def test_json_chunks_reassemble_to_the_audio_sent(gateway):
    cfg = fast(chunk_ms=40)
    pcm = [tone(130, 7), tone(40, -3), tone(10, 1)]
    async with connect_session(gateway.url, cfg) as s:
        for audio in pcm:
            await s.send_utterance(audio)
        _ = [ev async for ev in s.events(until_answered=True, timeout_s=3)]
    assert gateway.conns[0].utterances == pcm
    chunks = gateway.of_type("audio_chunk")
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))  # one sequence per session
    assert all(c["session_id"] == "s-test-0" and c["client_timestamp_ms"] > 0 for c in chunks)
    finals = [i for i, c in enumerate(chunks) if c["is_final"]]
    assert len(finals) == 3 and all(chunks[i]["payload"] == "" for i in finals)
    first = chunks[: finals[0]]  # 130 ms in 40 ms chunks: 3 full ones and 10 ms
    sizes = [len(__import__("base64").b64decode(c["payload"])) for c in first]
    assert sizes == [1280, 1280, 1280, 320]
    assert all("utterance_index" not in c for c in chunks)


async def test_binary_frames_reassemble_and_end_with_a_short_final_header(gateway):
    from lingua_shared.protocol.session import FRAME_AUDIO, FRAME_FINAL

    pcm = [tone(250, 11), tone(30, 12)]
    async with connect_session(gateway.url, fast()) as s:
        for audio in pcm:
            await s.send_utterance(audio, binary=True)
        _ = [ev async for ev in s.events(until_answered=True, timeout_s=3)]
    frames = [f for f in gateway.conns[0].frames if not isinstance(f, dict)]
    assert gateway.conns[0].utterances == pcm
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert [f.frame_type for f in frames] == [FRAME_AUDIO] * 3 + [FRAME_FINAL] + [
        FRAME_AUDIO, FRAME_FINAL]  # fmt: skip
    assert all(f.session_id == "s-test-0" for f in frames)
    assert [f.is_final for f in frames].count(True) == 2
    assert all(0 <= f.timestamp < 2**32 for f in frames)


async def test_whole_utterance_is_one_message_without_an_index(gateway):
    audio = tone(500, 42)
    async with connect_session(gateway.url, fast()) as s:
        assert await s.send_utterance(audio, whole=True, request_id="req-1") == 0
        assert await s.send_utterance(tone(20, 1)) == 1  # mixing encodings keeps counting
        events = [ev async for ev in s.events(until_answered=True, timeout_s=3)]
    [msg] = gateway.of_type("utterance")
    assert msg["audio_format"] == "pcm16" and msg["sample_rate"] == 16000
    assert msg["request_id"] == "req-1" and "utterance_index" not in msg
    assert gateway.conns[0].utterances[0] == audio
    assert sorted(ev.utterance_index for ev in events) == [0, 1]


async def test_session_init_fields_one_way_and_two_way(gateway):
    async with connect_session(gateway.url, fast(trace_id="trace-1")):
        pass
    async with connect_session(gateway.url, SessionConfig.two_way("en", "ja")):
        pass
    one, two = gateway.conns[0].init, gateway.conns[1].init
    assert one["mode"] == "one_way" and (one["src_lang"], one["tgt_lang"]) == ("en", "zh")
    assert one["audio_format"] == "pcm16" and one["sample_rate"] == 16000
    assert one["trace_id"] == "trace-1" and one["client_version"] and one["platform"]
    assert two["mode"] == "two_way_auto" and two["src_lang"] == "auto"
    assert (two["lang_a"], two["lang_b"], two["tgt_lang"]) == ("en", "ja", "ja")


async def test_refusals_and_silence_at_session_init(gateway):
    gateway.init_reply = lambda msg, n: {"type": "error", "code": "NO_AVAILABLE_NODE",
                                         "message": "no node for en->zh"}  # fmt: skip
    with pytest.raises(SessionRejected, match="no node") as info:
        await open_session(gateway.url, fast())
    assert info.value.code == "NO_AVAILABLE_NODE"
    gateway.init_reply = lambda msg, n: {"type": "session_init_ack", "session_id": "s",
                                         "negotiated_audio_format": "opus"}  # fmt: skip
    with pytest.raises(SessionRejected, match="opus"):
        await open_session(gateway.url, fast())
    gateway.init_reply = lambda msg, n: None
    with pytest.raises(ClientTimeout, match="session_init_ack"):
        await open_session(gateway.url, fast(init_timeout_s=0.2))
    await gateway.wait_for(lambda: all(c.close_code == 1000 for c in gateway.conns))
    with pytest.raises(ConnectError):
        await open_session("ws://127.0.0.1:1/ws/session", fast())


async def test_close_handshake_and_a_gateway_that_never_acks(gateway):
    s = await open_session(gateway.url, fast())
    await s.close("done here")
    [close] = gateway.of_type("session_close")
    assert close == {"type": "session_close", "session_id": "s-test-0", "reason": "done here"}
    assert s.closed and s.lost is None
    await gateway.wait_for(lambda: gateway.conns[0].close_code == 1000)
    with pytest.raises(AudioError):
        await s.send_utterance(b"")
    gateway.ack_close = False
    s = await open_session(gateway.url, fast(close_timeout_s=0.2))
    with pytest.raises(ClientTimeout, match="session_close_ack"):
        await s.close()
    assert s.closed


async def test_a_dropped_connection_surfaces_as_connection_lost(gateway):
    gateway.drop_after = 2
    async with connect_session(gateway.url, fast()) as s:
        await s.send_utterance(tone(20, 1))
        await s.send_utterance(tone(20, 2))
        with pytest.raises(ConnectionLost):
            _ = [ev async for ev in s.events(until_answered=True, timeout_s=3)]
        with pytest.raises(ConnectionLost):
            await s.send_utterance(tone(20, 3))
    assert s.lost is not None and s.lost.code is None  # no close frame


async def test_unanswered_utterances_time_out_by_name(gateway):
    gateway.policy = lambda sid, i, a: [] if i == 1 else [(0.0, gateway.translation(sid, i, a))]
    async with connect_session(gateway.url, fast()) as s:
        for value in range(3):
            await s.send_utterance(tone(20, value))
        seen = []
        with pytest.raises(ResultTimeout, match="#1") as info:
            async for ev in s.events(until_answered=True, timeout_s=0.4):
                seen.append(ev.utterance_index)
        assert info.value.pending == [1] and sorted(seen) == [0, 2]
        assert not summarize(s.tracker).exactly_once


async def test_heartbeats_and_audio_checks(gateway):
    async with connect_session(gateway.url, fast(heartbeat_interval_s=0.05)) as s:
        await gateway.wait_for(lambda: len(gateway.of_type("client_heartbeat")) >= 3)
        await asyncio.sleep(0.05)
        assert s.server_heartbeats >= 2
        for bad in (b"", b"\x01\x02\x03"):
            with pytest.raises(AudioError):
                await s.send_utterance(bad)
        with pytest.raises(AudioError, match="max_utterance_ms"):
            await s.send_utterance(tone(20_001, 1))
        with pytest.raises(AudioError, match="frame"):
            await s.send_utterance(tone(15_000, 1), whole=True)
        assert s.tracker.next_index == 0  # refused audio reserves no index
    beat = gateway.of_type("client_heartbeat")[0]
    assert beat["session_id"] == "s-test-0" and beat["timestamp"] > 0


async def test_realtime_paces_chunks_at_the_speed_of_the_audio(gateway):
    loop = asyncio.get_running_loop()
    async with connect_session(gateway.url, fast(chunk_ms=50)) as s:
        start = loop.time()
        await s.send_utterance(tone(300, 5), realtime=True)
        elapsed = loop.time() - start
        start = loop.time()
        await s.send_utterance(tone(300, 5))
        quick = loop.time() - start
    assert 0.28 <= elapsed < 1.0 and quick < 0.2


async def test_an_utterance_cut_off_mid_send_blocks_the_session(gateway):
    """Its chunks reached the gateway but its final did not: the next audio would be glued
    to them under an index the client no longer predicts, so the client refuses."""
    async with connect_session(gateway.url, fast(chunk_ms=20)) as s:
        send = asyncio.create_task(s.send_utterance(tone(2000, 9), realtime=True))
        await gateway.wait_for(lambda: gateway.of_type("audio_chunk"))
        send.cancel()
        await asyncio.gather(send, return_exceptions=True)
        with pytest.raises(ClientError, match="interrupted"):
            await s.send_utterance(tone(20, 1))
        assert s.tracker.sent == 0 and not gateway.conns[0].utterances
