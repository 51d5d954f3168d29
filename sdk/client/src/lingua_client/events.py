"""What :meth:`ClientSession.events` yields, and how server frames become those events.

Each event wraps the protocol's own model (``TranslationResult``, ``ClientAsrPartial``,
``MissingResult``, ``UiEvent``, ``ErrorMessage``) rather than a copy of its fields: a newer
gateway's extra fields stay reachable on ``event.message`` (the models keep unknown fields). The
event adds what only the client knows: the utterance index it belongs to (for ``error``,
from ``details.utterance_index``) and the latency since that utterance's final frame.

Decoding is tolerant on purpose, as in the node agent: an unknown type or a malformed frame
from the gateway is logged and skipped, never a reason to drop a session mid-speech.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lingua_shared.protocol import ErrorMessage
from lingua_shared.protocol.session import (
    SESSION_OUTBOUND,
    SESSION_OUTBOUND_TYPES,
    ClientAsrPartial,
    MissingResult,
    SessionOutbound,
    TranslationResult,
    UiEvent,
)

ResultMessage = TranslationResult | ClientAsrPartial | MissingResult | UiEvent | ErrorMessage
KNOWN_TYPES = SESSION_OUTBOUND_TYPES  # what the gateway may send a client


@dataclass(frozen=True)
class SessionEvent:
    """One answer or partial: ``message`` is the wire model, ``latency_ms`` is measured from
    the final frame of utterance ``utterance_index`` (``None`` when the event names no
    utterance, or one this client did not send)."""

    message: ResultMessage
    utterance_index: int | None
    latency_ms: float | None
    received_at: float  # event-loop time (monotonic seconds)

    @property
    def kind(self) -> str:
        return self.message.type

    @property
    def is_answer(self) -> bool:
        """The one answer an utterance gets (a partial or a ui_event is not an answer)."""
        return self.kind not in ("asr_partial", "ui_event") and self.utterance_index is not None

    def to_json(self) -> dict[str, Any]:
        """A flat, JSON-ready dict (``--json``): the wire fields plus ``latency_ms``.
        ``tts_audio`` is replaced by its size, so lines stay short."""
        data = self.message.to_wire()
        audio = data.pop("tts_audio", None)
        if audio:
            data["tts_audio_bytes"] = len(audio) * 3 // 4
        data["utterance_index"] = self.utterance_index
        data["latency_ms"] = None if self.latency_ms is None else round(self.latency_ms, 1)
        return data


def error_index(err: ErrorMessage) -> int | None:
    """The utterance an ``error`` is about, when the gateway said (``details``)."""
    value = (err.details or {}).get("utterance_index")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Undecodable:
    """Why a frame from the gateway was skipped (for one log line)."""

    reason: str
    detail: Any = None


def decode(raw: str | bytes) -> SessionOutbound | Undecodable:
    if isinstance(raw, bytes):
        return Undecodable("binary frame", len(raw))  # a pong: we never ping in binary
    try:
        data = json.loads(raw)
    except ValueError:
        return Undecodable("not JSON", raw[:200])
    mtype = data.get("type") if isinstance(data, dict) else None
    if mtype not in KNOWN_TYPES:
        return Undecodable("unknown message type", str(mtype)[:64])
    try:
        return SESSION_OUTBOUND.validate_python(data)
    except ValidationError as exc:
        return Undecodable(f"invalid {mtype}", exc.errors(include_url=False)[:3])
