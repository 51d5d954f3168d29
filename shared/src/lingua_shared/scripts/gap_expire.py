"""``gap_expire.lua``: a session's next result is overdue: answer its index with
missing_result and release what is then due."""

from __future__ import annotations

from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import Delivery, delivery
from lingua_shared.scripts.codes import check

NAME = "gap_expire"
Result = Delivery


def args(
    keys: Keys, *, session_id: str, now_ms: int, gap_ms: int, session_ttl_ms: int
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [session_id, now_ms, gap_ms, session_ttl_ms]


def parse(reply: list[Any]) -> Delivery:
    """GAP_ANSWERED: the missing_result and what follows it; NO_GAP: nothing."""
    return delivery(check(NAME, reply), reply)
