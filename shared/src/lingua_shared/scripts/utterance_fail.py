"""``utterance_fail.lua``: answer an utterance that never becomes a job in its place in the
session's delivery, and release what is then due."""

from __future__ import annotations

import json
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import Delivery, delivery
from lingua_shared.scripts.codes import check

NAME = "utterance_fail"
Result = Delivery


def args(
    keys: Keys,
    *,
    session_id: str,
    utterance_index: int,
    now_ms: int,
    payload: dict[str, Any],
    gap_ms: int,
    session_ttl_ms: int,
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [
        session_id,
        utterance_index,
        now_ms,
        json.dumps(payload),
        gap_ms,
        session_ttl_ms,
    ]


def parse(reply: list[Any]) -> Delivery:
    """ANSWERED: what is now due; ALREADY_ANSWERED, NO_SUCH_SESSION: nothing."""
    return delivery(check(NAME, reply), reply)
