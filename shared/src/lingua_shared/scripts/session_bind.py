"""``session_bind.lua``: bind a session to a client connection (``resume``) or unbind a
connection that ends (``unbind``, fenced by the connection)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import text
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "session_bind"


@dataclass(frozen=True)
class Binding:
    """``RESUMED``: the binding it replaced, the session record, the answered indices above
    ``next_deliver`` (first-come sessions) and the outbox (index -> message, index order).
    Other codes carry nothing."""

    code: ScriptCode
    old_gateway_id: str = ""
    old_conn_id: str = ""
    record: dict[str, str] = field(default_factory=dict)
    sent: set[int] = field(default_factory=set)
    outbox: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


Result = Binding


def args(
    keys: Keys,
    *,
    session_id: str,
    mode: str,
    gateway_id: str,
    conn_id: str,
    client: str,
    now_ms: int,
    session_ttl_ms: int,
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [session_id, mode, gateway_id, conn_id, client, now_ms, session_ttl_ms]


def parse(reply: list[Any]) -> Binding:
    """RESUMED (with what the gateway needs to go on), UNBOUND, NOT_BOUND, FOREIGN_SESSION,
    NO_SUCH_SESSION."""
    code = check(NAME, reply)
    if code != ScriptCode.RESUMED:
        return Binding(code)
    _, old_gateway, old_conn, flat, sent, box = reply
    record = {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}
    outbox = sorted((int(box[i]), json.loads(box[i + 1])) for i in range(0, len(box), 2))
    return Binding(code, text(old_gateway), text(old_conn), record, {int(x) for x in sent}, outbox)
