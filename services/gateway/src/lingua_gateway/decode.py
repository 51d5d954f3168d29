"""Frame decoding with a typed error for every way a frame can be wrong."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

from lingua_shared.errors import InvalidMessage

T = TypeVar("T")
MAX_ERRORS_REPORTED = 5


def decode_frame(raw: str | bytes, adapter: TypeAdapter[T], known_types: frozenset[str]) -> T:
    """Parse one JSON text frame into a model of ``adapter``, or raise :class:`InvalidMessage`.

    The message says what is wrong: not JSON, not an object, no/unknown ``type``, or which
    fields have the wrong type (first few, with their location).
    """
    if isinstance(raw, bytes):
        raise InvalidMessage("binary frames are not accepted on this endpoint; send JSON text")
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"a message must be a JSON object, got {type(obj).__name__}")
    mtype = obj.get("type")
    if not isinstance(mtype, str):
        raise InvalidMessage("a message needs a string field 'type'")
    if mtype not in known_types:
        raise InvalidMessage(
            f"unknown message type {mtype[:64]!r}", {"known_types": sorted(known_types)}
        )
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"][1:]) or "(message)", "msg": e["msg"]}
            for e in exc.errors()[:MAX_ERRORS_REPORTED]
        ]
        first = errors[0] if errors else {"loc": "?", "msg": "invalid"}
        raise InvalidMessage(
            f"invalid {mtype}: {first['loc']}: {first['msg']}",
            {"type": mtype, "errors": errors, "error_count": exc.error_count()},
        ) from None
