"""The gateway's own decoding functions, called directly with hostile input (no sockets).

Whatever a peer sends, these functions either return a value or raise the typed error the
read loop turns into an ``error`` message; anything else would surface as INTERNAL_ERROR. The
errors they raise must also be cheap to send back: serialisable, and never an echo of a huge
input.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lingua_gateway.decode import decode_frame
from lingua_gateway.session_frames import check_frame_size, decode_base64, parse_client_frame
from lingua_gateway.session_spec import spec_from_init
from lingua_shared.errors import InvalidMessage, LinguaError, MessageTooLarge, UnsupportedFeature
from lingua_shared.protocol import NODE_INBOUND, CapabilityError, NodeRegister, derive_capabilities
from lingua_shared.protocol.session import SESSION_INBOUND, SessionInit, build_binary_frame
from tests.hostile import strategies as hs

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_ERROR_BYTES = 4_096  # an error message never grows with the input it refuses

node_frames = hs.text_frames(hs.NODE_MODELS, hs.NODE_TYPES)
session_frames = hs.text_frames(hs.SESSION_MODELS, hs.SESSION_TYPES)


def assert_sendable(err: LinguaError) -> None:
    wire = orjson.dumps(err.to_message().to_wire())
    assert len(wire) <= MAX_ERROR_BYTES, (len(wire), wire[:300])


def decode_or_typed_error(raw: str | bytes, adapter, known: frozenset[str]) -> object | None:
    try:
        msg = decode_frame(raw, adapter, known)
    except InvalidMessage as err:
        assert_sendable(err)
        return None
    assert msg.type in known  # type: ignore[attr-defined]
    return msg


@PROPERTY
@given(raw=node_frames | st.text(max_size=200))
def test_node_frames_decode_to_a_known_message_or_invalid_message(raw: str) -> None:
    decode_or_typed_error(raw, NODE_INBOUND, hs.NODE_TYPES)


@PROPERTY
@given(raw=session_frames | st.text(max_size=200))
def test_session_frames_decode_to_a_known_message_or_invalid_message(raw: str) -> None:
    decode_or_typed_error(raw, SESSION_INBOUND, hs.SESSION_TYPES)


@PROPERTY
@given(msg=hs.typed_messages(hs.NODE_MODELS) | hs.typed_messages(hs.SESSION_MODELS))
def test_well_typed_messages_are_accepted_with_their_type(msg: dict) -> None:
    """What the models declare is what the decoder accepts (unknown fields included)."""
    node = msg["type"] in hs.NODE_TYPES and any(
        msg["type"] == hs.type_tag(m) for m in hs.NODE_MODELS
    )
    adapter, known = (NODE_INBOUND, hs.NODE_TYPES) if node else (SESSION_INBOUND, hs.SESSION_TYPES)
    decoded = decode_frame(hs.dumps(msg), adapter, known)
    assert decoded.type == msg["type"]


@PROPERTY
@given(raw=st.binary(max_size=100))
def test_binary_frames_on_a_json_endpoint_are_invalid_message(raw: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_frame(raw, NODE_INBOUND, hs.NODE_TYPES)


@PROPERTY
@given(data=hs.binary_frames("s-0123456789abcdef") | hs.binary_frames("\u00e9\u4e2d") | st.binary())
def test_binary_frame_parser_returns_a_frame_or_invalid_message(data: bytes) -> None:
    try:
        frame = parse_client_frame(data)
    except InvalidMessage as err:
        assert_sendable(err)
        return
    # a frame that parses is rebuilt byte for byte (the reserved byte aside)
    rebuilt = build_binary_frame(frame)
    if data[0] != 0x02:
        data = data[:11] + b"\x00" + data[12:]
    assert rebuilt == data


@PROPERTY
@given(frame=hs.valid_binary_frames("s-1") | hs.valid_binary_frames(""))
def test_well_formed_binary_frames_always_parse(frame: bytes) -> None:
    assert build_binary_frame(parse_client_frame(frame)) == frame


@PROPERTY
@given(
    raw=st.text(max_size=300) | st.binary(max_size=300),
    limit=st.integers(0, 400),
)
def test_frame_size_check_refuses_exactly_what_is_over_the_limit(raw, limit: int) -> None:
    size = len(raw.encode() if isinstance(raw, str) else raw)
    try:
        check_frame_size(raw, limit)
    except MessageTooLarge as err:
        assert size > limit
        assert_sendable(err)
        return
    assert size <= limit


@PROPERTY
@given(text=st.text(max_size=80))
def test_base64_decoding_returns_bytes_or_invalid_message(text: str) -> None:
    try:
        assert isinstance(decode_base64(text, "payload"), bytes)
    except InvalidMessage as err:
        assert_sendable(err)


@PROPERTY
@given(msg=hs.model_dicts(SessionInit) | hs.mistyped_messages([SessionInit]))
def test_session_init_validation_raises_only_typed_errors(msg: dict) -> None:
    decoded = decode_or_typed_error(hs.dumps(msg), SESSION_INBOUND, hs.SESSION_TYPES)
    if decoded is None:
        return
    assert isinstance(decoded, SessionInit)
    try:
        spec = spec_from_init(decoded)
    except (InvalidMessage, UnsupportedFeature) as err:
        assert_sendable(err)
        return
    assert spec.mode in ("one_way", "two_way_auto")


@PROPERTY
@given(
    msg=hs.model_dicts(NodeRegister)
    | hs.mistyped_messages([NodeRegister])
    | hs.valid_registers("n-1")
)
def test_registration_rules_raise_only_capability_errors(msg: dict) -> None:
    decoded = decode_or_typed_error(hs.dumps(msg), NODE_INBOUND, hs.NODE_TYPES)
    if decoded is None:
        return
    assert isinstance(decoded, NodeRegister)
    try:
        caps = derive_capabilities(decoded)
    except CapabilityError as exc:
        assert len(exc.message) <= MAX_ERROR_BYTES
        return
    assert 1 <= caps.capacity <= 256 and caps.lang_sets


@PROPERTY
@given(msg=hs.valid_registers("n-1"))
def test_valid_registrations_are_accepted(msg: dict) -> None:
    decoded = decode_frame(hs.dumps(msg), NODE_INBOUND, hs.NODE_TYPES)
    assert derive_capabilities(decoded).lang_sets  # type: ignore[arg-type]
