"""Client <-> gateway messages (``/ws/session``) and the binary audio frame format.

What lingua's own web client sends (docs/protocol.md §7): a two-way ``session_init``,
``audio_chunk`` every ~256 ms ending each utterance with ``is_final`` and an empty payload,
never ``utterance_index`` (the server numbers utterances), ``client_heartbeat`` every 30 s.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from lingua_shared.protocol.codes import PROTOCOL_VERSION, SAMPLE_RATE
from lingua_shared.protocol.common import ErrorMessage, WireModel, message_types


class SessionInit(WireModel):
    type: Literal["session_init"] = "session_init"
    client_version: str | None = None
    platform: str | None = None
    src_lang: str = "auto"
    tgt_lang: str | None = None
    mode: str | None = None  # one_way | two_way_auto
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: list[str] | None = None
    tenant_id: str | None = None
    trace_id: str | None = None
    dialect: str | None = None
    features: dict[str, Any] | None = None
    enable_streaming_asr: bool | None = None
    partial_update_interval_ms: int | None = None
    audio_format: str | None = None  # ours: "opus" (default, as lingua's client) or "pcm16"
    sample_rate: int | None = None
    # ours: "arrival" (each answer as soon as it is ready) or "ordered" (by utterance index)
    result_delivery: str | None = None
    # ours, optional: take up this session (its connection was lost) instead of opening one;
    # the other fields are then ignored (the session keeps its own)
    resume_session_id: str | None = None
    # with resume_session_id: indices the client already has an answer for (not sent again)
    resume_received: list[int] | None = None
    # ours, optional: the client's region; the session is scheduled in that region's cell
    # (else in the gateway's region's cell), falling back to other cells by their ladder
    region: str | None = None


class SessionInitAck(WireModel):
    type: Literal["session_init_ack"] = "session_init_ack"
    session_id: str
    message: str = "session created"
    trace_id: str | None = None
    protocol_version: str = PROTOCOL_VERSION
    use_binary_frame: bool = False
    negotiated_codec: str = "opus"
    negotiated_audio_format: str = "opus"
    negotiated_sample_rate: int = SAMPLE_RATE
    negotiated_channel_count: int = 1
    resumed: bool | None = None  # ours: true when session_init resumed an existing session
    # ours, on a resume: the index the server gives the next utterance it numbers
    next_utterance_index: int | None = None


class AudioChunk(WireModel):
    type: Literal["audio_chunk"] = "audio_chunk"
    session_id: str | None = None
    seq: int | None = None
    is_final: bool = False
    payload: str | None = None
    client_timestamp_ms: int | None = None


class Utterance(WireModel):
    type: Literal["utterance"] = "utterance"
    session_id: str | None = None
    utterance_index: int | None = None
    manual_cut: bool | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    audio: str = ""
    audio_format: str | None = None
    sample_rate: int | None = None
    trace_id: str | None = None
    request_id: str | None = None  # ours: an idempotency key the client may set


class ClientHeartbeat(WireModel):
    type: Literal["client_heartbeat"] = "client_heartbeat"
    session_id: str | None = None
    timestamp: int | None = None


class ServerHeartbeat(WireModel):
    type: Literal["server_heartbeat"] = "server_heartbeat"
    session_id: str
    timestamp: int


class SessionClose(WireModel):
    type: Literal["session_close"] = "session_close"
    session_id: str | None = None
    reason: str | None = None


class SessionCloseAck(WireModel):
    type: Literal["session_close_ack"] = "session_close_ack"
    session_id: str
    reason: str | None = None


class TranslationResult(WireModel):
    type: Literal["translation_result"] = "translation_result"
    session_id: str
    utterance_index: int
    job_id: str
    text_asr: str = ""
    text_translated: str = ""
    tts_audio: str = ""
    tts_format: str = ""
    trace_id: str | None = None
    service_timings: dict[str, Any] | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None


class ClientAsrPartial(WireModel):
    type: Literal["asr_partial"] = "asr_partial"
    session_id: str
    utterance_index: int
    job_id: str
    text: str = ""
    is_final: bool = False
    trace_id: str | None = None


class MissingResult(WireModel):
    """An utterance that gets no result: ``reason`` says why (``no_result``: its node finished
    it without text; ``silence``; ``error``: it failed, see ``error_code``; ``gap_timeout``)."""

    type: Literal["missing_result"] = "missing_result"
    session_id: str
    utterance_index: int
    reason: str = "gap_timeout"
    created_at_ms: int
    trace_id: str | None = None
    job_id: str | None = None
    error_code: str | None = None


class UiEvent(WireModel):
    """lingua's per-utterance progress and failure event: a failed utterance is reported as
    ``event: "ERROR"`` here (with its ``missing_result``), never as an ``error`` message, which
    lingua's web client shows as a modal alert."""

    type: Literal["ui_event"] = "ui_event"
    trace_id: str
    session_id: str
    job_id: str = ""
    utterance_index: int
    event: str = "ERROR"
    status: str = "error"
    error_code: str | None = None
    hint: str | None = None
    elapsed_ms: int | None = None


SessionInbound = Annotated[
    SessionInit | AudioChunk | Utterance | ClientHeartbeat | SessionClose | ErrorMessage,
    Field(discriminator="type"),
]
SESSION_INBOUND: TypeAdapter[SessionInbound] = TypeAdapter(SessionInbound)

SessionOutbound = Annotated[
    SessionInitAck
    | TranslationResult
    | ClientAsrPartial
    | MissingResult
    | UiEvent
    | ServerHeartbeat
    | SessionCloseAck
    | ErrorMessage,
    Field(discriminator="type"),
]
SESSION_OUTBOUND: TypeAdapter[SessionOutbound] = TypeAdapter(SessionOutbound)

SESSION_INBOUND_TYPES = message_types(SessionInbound)  # the gateway's known types on /ws/session
SESSION_OUTBOUND_TYPES = message_types(SessionOutbound)  # the client's known types


# -- binary frames -------------------------------------------------------------------------
FRAME_AUDIO = 0x01
FRAME_FINAL = 0x02
FRAME_PING = 0x10
FRAME_PONG = 0x11
_AUDIO_HEADER = struct.Struct("<BBIIBB")  # type, sid_len, seq, timestamp, is_final, reserved
_FINAL_HEADER = struct.Struct("<BBII")  # type, sid_len, seq, timestamp


class FrameError(ValueError):
    """A binary frame that does not follow the format; the message says how."""


@dataclass(frozen=True)
class BinaryFrame:
    frame_type: int
    session_id: str
    seq: int
    timestamp: int
    is_final: bool
    audio: bytes


def parse_binary_frame(data: bytes) -> BinaryFrame:
    """Parse one binary frame (12-byte header for audio/ping/pong, 10 bytes for final)."""
    if len(data) < 1:
        raise FrameError("empty binary frame")
    ftype = data[0]
    if ftype == FRAME_FINAL:
        header = _FINAL_HEADER
        if len(data) < header.size:
            raise FrameError(f"final frame shorter than its {header.size}-byte header")
        _, sid_len, seq, ts = header.unpack_from(data)
        is_final = True
    elif ftype in (FRAME_AUDIO, FRAME_PING, FRAME_PONG):
        header = _AUDIO_HEADER
        if len(data) < header.size:
            raise FrameError(f"frame shorter than its {header.size}-byte header")
        _, sid_len, seq, ts, final_flag, _reserved = header.unpack_from(data)
        if final_flag not in (0, 1):
            raise FrameError(f"is_final must be 0 or 1, got {final_flag}")
        is_final = bool(final_flag)
    else:
        raise FrameError(f"unknown frame_type 0x{ftype:02x}")
    end = header.size + sid_len
    if len(data) < end:
        raise FrameError(f"frame truncated: session id of {sid_len} bytes announced")
    try:
        session_id = data[header.size : end].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("session id is not valid UTF-8") from None
    return BinaryFrame(ftype, session_id, seq, ts, is_final, bytes(data[end:]))


def build_binary_frame(frame: BinaryFrame) -> bytes:
    """The inverse of :func:`parse_binary_frame` (clients, tests, the fuzz harness)."""
    sid = frame.session_id.encode("utf-8")
    if len(sid) > 255:
        raise FrameError("session id longer than 255 bytes")
    if frame.frame_type == FRAME_FINAL:
        head = _FINAL_HEADER.pack(FRAME_FINAL, len(sid), frame.seq, frame.timestamp)
    else:
        head = _AUDIO_HEADER.pack(
            frame.frame_type, len(sid), frame.seq, frame.timestamp, int(frame.is_final), 0
        )
    return head + sid + frame.audio
