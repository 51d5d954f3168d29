"""Fuzz the gateway's JSON decoding and message validation on both endpoints.

What runs is what the read loops run on a text frame: ``decode_frame`` (JSON, object,
``type``, the pydantic models), then the rules behind it: ``derive_capabilities`` for a
``node_register`` (rule N1) and ``spec_from_init`` for a ``session_init``. Property: each
returns or raises its typed error (``InvalidMessage`` / ``CapabilityError`` /
``UnsupportedFeature``), and every error is serialisable and small; anything else is a crash.

Half the inputs are raw text; the other half start from a valid message of a random type and
overwrite one field with fuzzed JSON, so the models' fields are reached without a corpus.

    .venv/bin/python fuzz/fuzz_json_decode.py -max_total_time=30
"""

from __future__ import annotations

import json
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    import orjson

    from lingua_gateway.decode import decode_frame
    from lingua_gateway.session_spec import spec_from_init
    from lingua_shared.errors import InvalidMessage, LinguaError, UnsupportedFeature
    from lingua_shared.protocol import NODE_INBOUND, CapabilityError, derive_capabilities
    from lingua_shared.protocol.node import NODE_INBOUND_TYPES, NodeRegister
    from lingua_shared.protocol.session import SESSION_INBOUND, SESSION_INBOUND_TYPES, SessionInit

NODE_TYPES = NODE_INBOUND_TYPES
SESSION_TYPES = SESSION_INBOUND_TYPES
LANGS = {"asr_languages": ["en", "zh"], "semantic_languages": ["en", "zh"]}
SEEDS: list[dict[str, Any]] = [
    {
        "type": "node_register",
        "node_id": "n-1",
        "capability_by_type": [{"type": "asr", "ready": True}, {"type": "semantic", "ready": True}],
        "language_capabilities": LANGS,
        "lang_sets": [["en", "zh"]],
        "max_concurrent_jobs": 2,
        "heartbeat_interval_ms": 1000,
        "region": "eu",
        "gpu_tier": "a100",
    },
    {"type": "node_heartbeat", "node_id": "n-1", "resource_usage": {"cpu_percent": 1.0}},
    {"type": "job_ack", "job_id": "j", "attempt_id": 1, "node_id": "n-1"},
    {"type": "job_result", "job_id": "j", "success": False, "error": {"code": "X"}},
    {"type": "asr_partial", "job_id": "j", "text": "hi", "is_final": False},
    {"type": "node_error", "code": "MODEL_NOT_AVAILABLE", "details": {"service": "tts"}},
    {"type": "error", "code": "X", "message": "m"},
    {"type": "session_init", "mode": "one_way", "src_lang": "zh", "tgt_lang": "en"},
    {"type": "session_init", "mode": "two_way_auto", "lang_a": "en", "lang_b": "zh"},
    {"type": "audio_chunk", "session_id": "s", "seq": 1, "is_final": True, "payload": ""},
    {"type": "utterance", "audio": "AAAA", "utterance_index": 0, "request_id": "r"},
    {"type": "client_heartbeat", "timestamp": 1},
    {"type": "session_close", "reason": "done"},
]
FIELDS = sorted({k for seed in SEEDS for k in seed} | {"trace_id", "auto_langs", "pipeline"})
MAX_ERROR_BYTES = 4096


def _fuzzed_value(fdp: atheris.FuzzedDataProvider) -> Any:
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
    try:
        return json.loads(text)
    except ValueError:
        return text


def _frame(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeBool():
        return fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    msg = dict(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        msg[FIELDS[fdp.ConsumeIntInRange(0, len(FIELDS) - 1)]] = _fuzzed_value(fdp)
    return json.dumps(msg)


def _check_error(err: LinguaError) -> None:
    wire = orjson.dumps(err.to_message().to_wire())
    if len(wire) > MAX_ERROR_BYTES:
        raise AssertionError(f"error of {len(wire)} bytes: {wire[:200]!r}")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    node = fdp.ConsumeBool()
    raw = _frame(fdp)
    adapter, known = (NODE_INBOUND, NODE_TYPES) if node else (SESSION_INBOUND, SESSION_TYPES)
    try:
        msg = decode_frame(raw, adapter, known)  # type: ignore[arg-type]
    except InvalidMessage as err:
        _check_error(err)
        return
    if msg.type not in known:  # type: ignore[attr-defined]
        raise AssertionError(f"decoded an unknown type: {msg!r}")
    if isinstance(msg, NodeRegister):
        try:
            derive_capabilities(msg)
        except CapabilityError as exc:
            if len(exc.message) > MAX_ERROR_BYTES:
                raise AssertionError(f"capability error of {len(exc.message)} chars") from None
    elif isinstance(msg, SessionInit):
        try:
            spec_from_init(msg)
        except (InvalidMessage, UnsupportedFeature) as err:
            _check_error(err)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
