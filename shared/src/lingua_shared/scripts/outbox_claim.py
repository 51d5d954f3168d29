"""``outbox_claim.lua``: claim the sessions whose outbox held an outcome unacknowledged for
``retry_ms``, so that one dispatcher replica publishes it again."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import text
from lingua_shared.scripts.codes import check

NAME = "outbox_claim"


@dataclass(frozen=True)
class Pending:
    """One claimed session: its connection and the outcomes it has not acknowledged."""

    session_id: str
    gateway_id: str
    conn_id: str
    items: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


Result = list[Pending]


def args(keys: Keys, *, now_ms: int, retry_ms: int, limit: int) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [now_ms, retry_ms, limit]


def parse(reply: list[Any]) -> list[Pending]:
    """CLAIMED: every claimed session (maybe none), its outcomes in index order."""
    check(NAME, reply)
    out = []
    for sid, gateway, conn, flat in reply[1:]:
        items = sorted((int(flat[i]), json.loads(flat[i + 1])) for i in range(0, len(flat), 2))
        out.append(Pending(text(sid), text(gateway), text(conn), items))
    return out
