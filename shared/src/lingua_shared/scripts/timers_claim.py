"""``timers_claim.lua``: claim the due job timers, so one dispatcher replica handles each."""

from __future__ import annotations

from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import rejected_list, text

NAME = "timers_claim"
Result = list[str]  # the claimed job ids (maybe none)


def args(keys: Keys, *, now_ms: int, claim_ms: int, limit: int) -> tuple[list[str], list[Any]]:
    return [keys.timers], [now_ms, claim_ms, limit]


def parse(reply: list[Any]) -> list[str]:
    rejected_list(NAME, reply)
    return [text(v) for v in reply]
