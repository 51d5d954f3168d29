"""What the client puts on the wire for one utterance, as pure functions (docs/protocol.md).

Three encodings of the same audio, all of which the gateway accepts on ``/ws/session``:

- ``audio_chunk`` JSON messages (base64 payload), then one ``is_final`` message with an empty
  payload: exactly what lingua's web client does, so it is the default;
- binary frames (12-byte header, then the session id and the audio), then a 10-byte-header
  ``final`` frame: a third smaller on the wire, no base64 cost;
- one ``utterance`` message holding the whole utterance (a client that cuts audio itself).

None of them carries an utterance index: the server numbers utterances, one per final, and
the client predicts the number by counting (see :mod:`lingua_client.tracker`). Kept free of
I/O so that tests can compare exactly what is built with what a fake gateway receives.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

from lingua_client.config import ONE_WAY, SAMPLE_RATE, SessionConfig
from lingua_shared.protocol.session import (
    FRAME_AUDIO,
    FRAME_FINAL,
    AudioChunk,
    BinaryFrame,
    ClientHeartbeat,
    SessionClose,
    SessionInit,
    Utterance,
    build_binary_frame,
)

U32 = 2**32


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def split_chunks(pcm: bytes, chunk_bytes: int) -> list[bytes]:
    """PCM cut into chunks of ``chunk_bytes`` (the last may be shorter); never splits a sample."""
    step = max(2, chunk_bytes - chunk_bytes % 2)
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def session_init(cfg: SessionConfig) -> dict[str, Any]:
    msg = SessionInit(
        client_version=cfg.client_version,
        platform=cfg.platform,
        mode=cfg.mode,
        src_lang=cfg.src_lang if cfg.mode == ONE_WAY else "auto",
        tgt_lang=cfg.tgt_lang,
        lang_a=cfg.lang_a,
        lang_b=cfg.lang_b,
        trace_id=cfg.trace_id,
        audio_format=cfg.audio_format,
        sample_rate=SAMPLE_RATE,
    )
    return msg.to_wire()


def json_chunks(session_id: str, chunks: list[bytes], first_seq: int) -> Iterator[dict[str, Any]]:
    """One ``audio_chunk`` per chunk, then the empty ``is_final`` one; ``seq`` counts on."""
    seq = first_seq
    for chunk in chunks:
        yield AudioChunk(
            session_id=session_id,
            seq=seq,
            is_final=False,
            payload=base64.b64encode(chunk).decode("ascii"),
            client_timestamp_ms=now_ms(),
        ).to_wire()
        seq += 1
    yield AudioChunk(
        session_id=session_id, seq=seq, is_final=True, payload="", client_timestamp_ms=now_ms()
    ).to_wire()


def binary_chunks(
    session_id: str, chunks: list[bytes], first_seq: int, clock_ms: int
) -> Iterator[bytes]:
    """Binary audio frames, then a ``final`` frame. ``clock_ms`` (ms since the session
    opened) fills the u32 timestamp: epoch milliseconds would not fit in 32 bits."""
    seq = first_seq
    for chunk in chunks:
        yield build_binary_frame(
            BinaryFrame(FRAME_AUDIO, session_id, seq % U32, clock_ms % U32, False, chunk)
        )
        seq += 1
    yield build_binary_frame(
        BinaryFrame(FRAME_FINAL, session_id, seq % U32, clock_ms % U32, True, b"")
    )


def whole_utterance(
    session_id: str, cfg: SessionConfig, pcm: bytes, request_id: str | None
) -> dict[str, Any]:
    """One ``utterance`` message. It deliberately has no ``utterance_index``: if the
    gateway's count ever ran ahead of ours (a server-side cut), an index we picked could
    collide with one already used, and the gateway would treat it as a duplicate."""
    return Utterance(
        session_id=session_id,
        manual_cut=True,
        src_lang=cfg.src_lang if cfg.mode == ONE_WAY else "auto",
        tgt_lang=cfg.tgt_lang,
        audio=base64.b64encode(pcm).decode("ascii"),
        audio_format=cfg.audio_format,
        sample_rate=SAMPLE_RATE,
        trace_id=cfg.trace_id,
        request_id=request_id,
    ).to_wire()


def heartbeat(session_id: str) -> dict[str, Any]:
    return ClientHeartbeat(session_id=session_id, timestamp=now_ms()).to_wire()


def session_close(session_id: str, reason: str) -> dict[str, Any]:
    return SessionClose(session_id=session_id, reason=reason).to_wire()
