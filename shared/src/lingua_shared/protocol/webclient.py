"""What lingua's web client sends, for the programs that stand in for it (the test sessions
and the bench's lingua scenario): its ``session_init`` and its audio chunks.

The web client opens a ``two_way_auto`` session and sends, about every 256 ms, one
``audio_chunk`` of 13 Opus packets framed as ``[u16 LE length][packet]`` (speech packets of
40-80 bytes: 600-1,000 bytes a chunk), then an empty final chunk (docs/protocol.md)."""

from __future__ import annotations

import random
import struct
import uuid
from typing import Any

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


def session_init(lang_a: str = "zh", lang_b: str = "en", **over: Any) -> dict[str, Any]:
    """The ``session_init`` lingua's web client sends; ``over`` replaces or adds fields."""
    return {
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
        **over,
    }
