"""The session endpoint's shortcut for ``audio_chunk`` frames: it takes only what the full
validation would take unchanged, and leaves everything else to it (and its typed error)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lingua_gateway.decode import decode_frame
from lingua_gateway.session_endpoint import SESSION_TYPES, plain_audio_chunk
from lingua_shared.errors import InvalidMessage
from lingua_shared.protocol.session import SESSION_INBOUND, AudioChunk

WEB_CLIENT_CHUNK = {
    "type": "audio_chunk",
    "session_id": "s-0123456789abcdef",
    "seq": 3,
    "is_final": False,
    "payload": "AAEC",
}


def test_the_web_clients_chunk_takes_the_shortcut() -> None:
    assert plain_audio_chunk(json.dumps(WEB_CLIENT_CHUNK)) == WEB_CLIENT_CHUNK
    final = {**WEB_CLIENT_CHUNK, "is_final": True, "payload": ""}
    assert plain_audio_chunk(json.dumps(final)) == final
    assert plain_audio_chunk('{"type":"audio_chunk"}') == {"type": "audio_chunk"}


@pytest.mark.parametrize(
    "change",
    [
        {"seq": "3"},  # the model coerces it: left to the model
        {"seq": 3.0},
        {"seq": True},
        {"is_final": "true"},
        {"is_final": 1},
        {"is_final": None},
        {"session_id": 5},
        {"payload": ["AAEC"]},
        {"client_timestamp_ms": "1"},
        {"extra_field": 1},  # kept by the model as an extra: left to it
    ],
)
def test_anything_the_model_would_change_or_refuse_is_left_to_it(change: dict[str, Any]) -> None:
    assert plain_audio_chunk(json.dumps({**WEB_CLIENT_CHUNK, **change})) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"audio_chunk"}',  # binary
        '{"type":"audio_chunk",',  # not JSON
        '["audio_chunk"]',
        '{"type":"client_heartbeat","note":"audio_chunk"}',
        '{"kind":"audio_chunk"}',
    ],
)
def test_other_frames_are_left_to_the_full_decode(raw: str | bytes) -> None:
    assert plain_audio_chunk(raw) is None


def test_a_chunk_left_to_the_model_still_gets_its_typed_error() -> None:
    raw = json.dumps({**WEB_CLIENT_CHUNK, "is_final": "maybe"})
    assert plain_audio_chunk(raw) is None
    with pytest.raises(InvalidMessage, match="is_final"):
        decode_frame(raw, SESSION_INBOUND, SESSION_TYPES)


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
chunks = st.dictionaries(
    st.sampled_from(["session_id", "seq", "is_final", "payload", "client_timestamp_ms", "other"]),
    values,
).map(lambda d: {"type": "audio_chunk", **d})


@given(chunks)
def test_what_the_shortcut_takes_the_model_takes_the_same(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj)
    fast = plain_audio_chunk(raw)
    if fast is None:
        return
    model = decode_frame(raw, SESSION_INBOUND, SESSION_TYPES)
    assert isinstance(model, AudioChunk)
    assert fast.get("session_id") == model.session_id
    assert fast.get("payload") == model.payload
    assert fast.get("is_final", False) is model.is_final
    assert fast.get("seq") == model.seq
