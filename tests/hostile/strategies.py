"""Hypothesis strategies for hostile input, built from the wire models themselves.

Every message type a peer may send on ``/ws/node`` and ``/ws/session`` is read off the
pydantic unions of :mod:`lingua_shared.protocol` (``NODE_INBOUND``, ``SESSION_INBOUND``), so a
field added to a model is fuzzed without touching this file. From each model we draw:

- *well-typed* messages (every field of its declared type, extras included, since the wire
  accepts unknown fields),
- the same with one field of a wrong JSON type, or a huge value (long strings, big numbers,
  long lists, deep nesting),
- unknown or missing ``type``, JSON that is not an object, text that is not JSON at all
  (random, or a valid message cut short),
- binary session frames: well-formed, truncated, and forged headers (wrong ``frame_type``,
  ``session_id_len`` past the end, ``is_final`` not 0/1, a session id that is not UTF-8),
- frames over the session limit and over the gateway's hard frame limit.

Plus semantically valid messages (a registration requirement N1 accepts, a ``session_init`` the
gateway accepts, audio) so the fuzzed streams also walk the paths valid input takes.
"""

from __future__ import annotations

import base64
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st
from pydantic import BaseModel

from lingua_shared.protocol.node import NODE_INBOUND
from lingua_shared.protocol.session import (
    FRAME_AUDIO,
    FRAME_FINAL,
    FRAME_PING,
    FRAME_PONG,
    SESSION_INBOUND,
    BinaryFrame,
    build_binary_frame,
)

SearchStrategy = st.SearchStrategy

# -- the models of each endpoint, read off the discriminated unions -------------------------


def union_models(adapter: Any) -> list[type[BaseModel]]:
    """The models of a ``TypeAdapter`` over ``Annotated[A | B | ..., Field(discriminator)]``."""
    annotated = adapter._type  # the Annotated[...] the adapter was built from
    union = typing.get_args(annotated)[0]
    return list(typing.get_args(union))


NODE_MODELS = union_models(NODE_INBOUND)
SESSION_MODELS = union_models(SESSION_INBOUND)


def type_tag(model: type[BaseModel]) -> str:
    ann = model.model_fields["type"].annotation
    return str(typing.get_args(ann)[0])


NODE_TYPES = frozenset(type_tag(m) for m in NODE_MODELS)
SESSION_TYPES = frozenset(type_tag(m) for m in SESSION_MODELS)

# -- JSON values ----------------------------------------------------------------------------
small_text = st.text(max_size=24)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | small_text
)
json_values: SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(small_text, inner, max_size=4),
    max_leaves=10,
)


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


huge_values: SearchStrategy[Any] = st.sampled_from(
    [
        "x" * 20_000,
        "\u00e9\u4e2d" * 4_000,  # multi-byte UTF-8
        10**30,
        -(10**30),
        2**63,
        -(2**63) - 1,
        1.7e308,
        -1.7e308,
        5e-324,
        [0] * 3_000,
        {f"k{i}": i for i in range(2_000)},
        _nested(200),
    ]
)
wrong_values: SearchStrategy[Any] = st.sampled_from(
    [None, True, 0, -1, 1.5, "", "text", [], [1, "a"], {}, {"a": {"b": []}}]
)

# -- well-typed messages, from the models ---------------------------------------------------


def for_annotation(ann: Any) -> SearchStrategy[Any]:
    """Values of the declared type of a model field (JSON-ready)."""
    if ann is Any:
        return json_values
    if ann is type(None):
        return st.none()
    if ann is str:
        return small_text
    if ann is bool:
        return st.booleans()
    if ann is int:
        return st.integers(-5, 1_000) | st.integers(-(2**40), 2**40)
    if ann is float:
        return st.floats(-1e6, 1e6, allow_nan=False)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return model_dicts(ann)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([for_annotation(a) for a in args])
    if origin is list:
        return st.lists(for_annotation(args[0]) if args else json_values, max_size=4)
    if origin is dict:
        value = for_annotation(args[1]) if args else json_values
        return st.dictionaries(small_text, value, max_size=4)
    raise TypeError(f"no strategy for field type {ann!r}")


def model_dicts(model: type[BaseModel]) -> SearchStrategy[dict[str, Any]]:
    """Dicts of ``model``'s fields, each of its declared type; optional fields may be absent."""
    required: dict[str, SearchStrategy[Any]] = {}
    optional: dict[str, SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        strat = for_annotation(info.annotation)
        if info.is_required() or (name == "type" and "type" in _tagged(model)):
            required[name] = strat
        else:
            optional[name] = strat
    return st.fixed_dictionaries(required, optional=optional)


def _tagged(model: type[BaseModel]) -> set[str]:
    ann = model.model_fields.get("type")
    literal = ann is not None and typing.get_origin(ann.annotation) is Literal
    return {"type"} if literal else set()


def typed_messages(models: list[type[BaseModel]]) -> SearchStrategy[dict[str, Any]]:
    """Any message of the endpoint, well typed, with a few unknown fields at times."""
    return st.one_of([_with_extras(m) for m in models])


def _with_extras(model: type[BaseModel]) -> SearchStrategy[dict[str, Any]]:
    """A model's dicts plus extra fields the model does not declare (the wire keeps them)."""
    names = [n for n in ("trace_id", "x_extra", "auth") if n not in model.model_fields]
    extras = st.dictionaries(st.sampled_from(names), json_values) if names else st.just({})
    return st.builds(lambda msg, extra: {**extra, **msg}, model_dicts(model), extras)


@st.composite
def mistyped_messages(draw: st.DrawFn, models: list[type[BaseModel]]) -> dict[str, Any]:
    """A well-typed message with one field (known or extra) replaced by a wrong or huge value."""
    msg = draw(typed_messages(models))
    model = next(m for m in models if type_tag(m) == msg["type"])
    fields = sorted(set(model.model_fields) - {"type"} | {"trace_id"})
    name = draw(st.sampled_from(fields))
    msg[name] = draw(wrong_values | huge_values | json_values)
    return msg


@st.composite
def unknown_type_messages(draw: st.DrawFn, known: frozenset[str]) -> dict[str, Any]:
    msg = draw(st.dictionaries(small_text, json_values, max_size=4))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        msg["type"] = draw(small_text.filter(lambda t: t not in known))
    elif choice == 1:
        msg["type"] = draw(wrong_values)
    else:
        msg.pop("type", None)
    return msg


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@st.composite
def invalid_json(draw: st.DrawFn, models: list[type[BaseModel]]) -> str:
    """Text that is not a JSON object: garbage, a cut-short message, a scalar or array."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(min_size=1, max_size=60).filter(_not_json))
    if kind == 1:
        full = dumps(draw(typed_messages(models)))
        return full[: draw(st.integers(0, max(0, len(full) - 1)))] or "{"
    if kind == 2:
        return dumps(draw(json_scalars | st.lists(json_values, max_size=3)))
    if kind == 3:
        return "[" * 5_000 + "]" * 5_000  # deeper than any JSON parser's limit
    return draw(st.sampled_from(["NaN", '{"type": NaN}', "1e400", '{"a":1,}', "\x00", "{'a': 1}"]))


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def text_frames(models: list[type[BaseModel]], known: frozenset[str]) -> SearchStrategy[str]:
    """Every kind of hostile JSON text frame for one endpoint."""
    return st.one_of(
        typed_messages(models).map(dumps),
        mistyped_messages(models).map(dumps),
        unknown_type_messages(known).map(dumps),
        invalid_json(models),
    )


# -- semantically valid messages ------------------------------------------------------------
LANGS = ["en", "zh", "ja", "de", "pt-br"]


@st.composite
def valid_registers(draw: st.DrawFn, node_id: str) -> dict[str, Any]:
    """A ``node_register`` requirement N1 accepts (ASR + Semantic ready, >= 2 shared languages)."""
    langs = draw(st.lists(st.sampled_from(LANGS), min_size=2, max_size=4, unique=True))
    msg: dict[str, Any] = {
        "type": "node_register",
        "node_id": node_id,
        "version": "fuzz",
        "capability_schema_version": "2.0",
        "platform": "linux",
        "hardware": {"cpu_cores": 8, "memory_gb": 32},
        "installed_models": [],
        "capability_by_type": [{"type": "asr", "ready": True}, {"type": "semantic", "ready": True}],
        "language_capabilities": {"asr_languages": langs, "semantic_languages": langs},
        "features_supported": {},
        "accept_public_jobs": True,
        "heartbeat_interval_ms": 1_000,
    }
    if draw(st.booleans()):
        msg["max_concurrent_jobs"] = draw(st.integers(1, 8))
    if draw(st.booleans()):
        msg["region"] = draw(st.sampled_from(["eu", "us"]))
    if draw(st.booleans()):  # an undeclared field the gateway reads when present
        msg["trace_id"] = draw(small_text)
    return msg


@st.composite
def registers_with_bad_extras(draw: st.DrawFn, node_id: str) -> dict[str, Any]:
    """A valid registration but for an undeclared field the gateway reads (``trace_id``)."""
    msg = draw(valid_registers(node_id))
    msg["trace_id"] = draw(wrong_values.filter(lambda v: v is not None) | huge_values)
    return msg


def valid_heartbeats(node_id: str) -> SearchStrategy[dict[str, Any]]:
    usage = st.fixed_dictionaries(
        {
            "cpu_percent": st.floats(0, 100),
            "mem_percent": st.floats(0, 100),
            "running_jobs": st.integers(0, 8),
        }
    )
    return st.builds(
        lambda ru: {"type": "node_heartbeat", "node_id": node_id, "timestamp": 1, **ru},
        st.fixed_dictionaries({}, optional={"resource_usage": usage}),
    )


def hostile_heartbeats(node_id: str) -> SearchStrategy[dict[str, Any]]:
    """Well-typed heartbeats of the node whose load figures are absurd (huge, negative)."""
    absurd = st.sampled_from([-1, -(10**30), 10**30, 2**63, 1.7e308, -1.7e308, 5e-324, 101.5])
    usage = st.fixed_dictionaries(
        {},
        optional={k: absurd for k in ("cpu_percent", "gpu_percent", "mem_percent", "running_jobs")},
    )
    return st.builds(
        lambda ru: {"type": "node_heartbeat", "node_id": node_id, "resource_usage": ru}, usage
    )


@st.composite
def valid_session_inits(draw: st.DrawFn) -> dict[str, Any]:
    a, b = draw(st.lists(st.sampled_from(LANGS), min_size=2, max_size=2, unique=True))
    fmt = draw(st.sampled_from(["pcm16", "opus", None]))
    if draw(st.booleans()):
        msg = {"type": "session_init", "mode": "one_way", "src_lang": a, "tgt_lang": b}
    else:
        msg = {"type": "session_init", "mode": "two_way_auto", "src_lang": "auto", "lang_a": a}
        msg.update(lang_b=b, tgt_lang=b)
    if fmt:
        msg["audio_format"] = fmt
    return msg


def audio_bytes(max_size: int = 3_200) -> SearchStrategy[bytes]:
    return st.binary(min_size=0, max_size=max_size)


def audio_chunks(session_id: str | None) -> SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda audio, final, seq: {
            "type": "audio_chunk",
            **({"session_id": session_id} if session_id else {}),
            "seq": seq,
            "is_final": final,
            "payload": base64.b64encode(audio).decode(),
        },
        audio_bytes(),
        st.booleans(),
        st.integers(0, 2**31),
    )


def utterances(session_id: str | None) -> SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda audio, index, rid: {
            "type": "utterance",
            **({"session_id": session_id} if session_id else {}),
            "audio": base64.b64encode(audio).decode(),
            **({"utterance_index": index} if index is not None else {}),
            **({"request_id": rid} if rid else {}),
        },
        audio_bytes(),
        st.none() | st.integers(0, 50) | st.integers(-2, 2**32),
        st.none() | st.text(min_size=1, max_size=40) | st.text(min_size=0, max_size=260),
    )


# -- binary session frames ------------------------------------------------------------------
FRAME_TYPES = (FRAME_AUDIO, FRAME_FINAL, FRAME_PING, FRAME_PONG)
U32 = st.integers(0, 2**32 - 1)


def valid_binary_frames(session_id: str) -> SearchStrategy[bytes]:
    return st.builds(
        lambda ftype, seq, ts, final, audio: build_binary_frame(
            BinaryFrame(ftype, session_id, seq, ts, final or ftype == FRAME_FINAL, audio)
        ),
        st.sampled_from(FRAME_TYPES),
        U32,
        U32,
        st.booleans(),
        audio_bytes(2_000),
    )


@st.composite
def forged_binary_frames(draw: st.DrawFn, session_id: str) -> bytes:
    """Frames that break the format one way or another (or, by chance, follow it)."""
    kind = draw(st.integers(0, 5))
    if kind == 0:  # truncated: a valid frame cut anywhere, including inside the header
        full = draw(valid_binary_frames(session_id))
        return full[: draw(st.integers(0, len(full) - 1))] if len(full) > 1 else b""
    if kind == 1:  # unknown frame type
        ftype = draw(st.integers(0, 255).filter(lambda t: t not in FRAME_TYPES))
        return bytes([ftype]) + draw(st.binary(max_size=40))
    if kind == 2:  # session_id_len past the end of the frame
        sid = session_id.encode()[:200]
        head = bytes([FRAME_AUDIO, len(sid) + draw(st.integers(1, 55))]) + bytes(10)
        return head + sid
    if kind == 3:  # is_final neither 0 nor 1
        frame = bytearray(draw(valid_binary_frames(session_id)))
        if frame[0] != FRAME_FINAL:
            frame[10] = draw(st.integers(2, 255))
        return bytes(frame)
    if kind == 4:  # session id that is not UTF-8
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"abc\x80"]))
        return bytes([FRAME_AUDIO, len(bad)]) + bytes(10) + bad + b"\x00\x01"
    return draw(st.binary(min_size=0, max_size=64))  # noise


def binary_frames(session_id: str) -> SearchStrategy[bytes]:
    return valid_binary_frames(session_id) | forged_binary_frames(session_id)


# -- frames over the limits -----------------------------------------------------------------


@dataclass(frozen=True)
class Oversize:
    """A frame of ``size`` bytes; ``binary`` picks the frame kind."""

    size: int
    binary: bool

    def frame(self, session_id: str = "") -> str | bytes:
        if self.binary:
            head = build_binary_frame(BinaryFrame(FRAME_AUDIO, session_id, 0, 0, False, b""))
            return head + b"\x00" * max(0, self.size - len(head))
        body = dumps({"type": "audio_chunk", "payload": ""})
        return body[:-2] + "A" * max(0, self.size - len(body)) + '"}'


def oversize_frames(soft_limit: int, hard_limit: int) -> SearchStrategy[Oversize]:
    """Over the per-endpoint limit (a typed error) or over the hard limit (close 1009)."""
    sizes = st.integers(soft_limit + 1, hard_limit) | st.integers(hard_limit + 1, hard_limit * 2)
    return st.builds(Oversize, sizes, st.booleans())
