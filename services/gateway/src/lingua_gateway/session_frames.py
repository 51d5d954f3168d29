"""Frame-level rules of ``/ws/session``: size, base64, binary frames, and INVALID_SESSION.

Kept apart from the connection so that each refusal is one small function with its typed
error, shared by the JSON and the binary paths.
"""

from __future__ import annotations

import base64
import binascii

from lingua_shared.errors import InvalidMessage, MessageTooLarge
from lingua_shared.protocol.session import (
    FRAME_PONG,
    BinaryFrame,
    FrameError,
    build_binary_frame,
    parse_binary_frame,
)


def check_frame_size(raw: str | bytes, limit: int) -> None:
    """MESSAGE_TOO_LARGE above ``ws_session_max_frame_bytes`` (the connection stays open).

    The whole gateway's ``max_size`` (close 1009) is the hard bound; this one is lower for
    sessions, whose only large frames are audio.
    """
    size = len(raw)
    if isinstance(raw, str) and size <= limit < size * 4:
        size = len(raw.encode())  # only measure the UTF-8 size when the char count cannot tell
    if size > limit:
        raise MessageTooLarge(
            f"frame of {size} bytes exceeds the session limit of {limit} bytes; "
            "send audio in smaller chunks",
            {"limit": limit, "size": size},
        )


def decode_base64(data: str, field: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage(f"{field} is not valid base64; the chunk was dropped") from None


def parse_client_frame(data: bytes) -> BinaryFrame:
    """A binary frame, or INVALID_MESSAGE carrying the parser's reason."""
    try:
        return parse_binary_frame(data)
    except FrameError as exc:
        raise InvalidMessage(f"invalid binary frame: {exc}") from None


def pong_for(ping: BinaryFrame) -> bytes:
    """The answer to a ping frame: same session id, seq and timestamp, no audio."""
    return build_binary_frame(
        BinaryFrame(FRAME_PONG, ping.session_id, ping.seq, ping.timestamp, False, b"")
    )
