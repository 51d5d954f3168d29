"""``outbox_ack.lua``: a gateway wrote these outcomes of a session to its client: remove them
from the session's outbox."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import CodeResult
from lingua_shared.scripts.codes import check

NAME = "outbox_ack"
Result = CodeResult  # value: how many outcomes are still in the outbox


def args(keys: Keys, *, session_id: str, indices: Iterable[int]) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [session_id, json.dumps(sorted(set(indices)))]


def parse(reply: list[Any]) -> CodeResult:
    """ACKED, with the number of outcomes left (``value``)."""
    return CodeResult(check(NAME, reply), str(int(reply[1])))
