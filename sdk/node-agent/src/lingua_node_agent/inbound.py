"""Decoding of gateway frames into wire models, tolerant by design.

docs/protocol.md says unknown fields are never an error; we extend that to unknown message types
and malformed frames from the gateway: they are logged and skipped, because one odd frame
(a newer gateway, a proxy's hiccup) must not cost a node its connection and its jobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lingua_shared.protocol import (
    ErrorMessage,
    JobAssign,
    JobCancel,
    NodeControl,
    NodeRegisterAck,
)
from lingua_shared.protocol.node import NODE_OUTBOUND, NODE_OUTBOUND_TYPES

GatewayMessage = NodeRegisterAck | JobAssign | JobCancel | NodeControl | ErrorMessage

INBOUND_TYPES = NODE_OUTBOUND_TYPES  # what the gateway may send a node


@dataclass(frozen=True)
class Skipped:
    """Why a frame was not turned into a message (for one log line)."""

    reason: str
    msg_type: str | None = None
    detail: Any = None


def decode(raw: str | bytes) -> GatewayMessage | Skipped:
    """The message in ``raw``, or a :class:`Skipped` saying why there is none."""
    if isinstance(raw, bytes):
        return Skipped("binary frame", detail=len(raw))
    try:
        data = json.loads(raw)
    except ValueError:
        return Skipped("not JSON", detail=raw[:200])
    mtype = data.get("type") if isinstance(data, dict) else None
    if mtype not in INBOUND_TYPES:
        return Skipped("unknown message type", msg_type=str(mtype)[:64])
    try:
        return NODE_OUTBOUND.validate_python(data)
    except ValidationError as exc:
        return Skipped("invalid message", msg_type=mtype, detail=exc.errors(include_url=False)[:3])
