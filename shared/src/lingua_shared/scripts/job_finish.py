"""``job_finish.lua``: a job ends (its result, or a typed error): free its slot, end the
session's earlier jobs its node left unanswered, and release the session's outcomes now due."""

from __future__ import annotations

import json
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import Delivery, delivery, text
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "job_finish"
Result = Delivery


def args(
    keys: Keys,
    *,
    job_id: str,
    attempt: int,
    node_id: str,
    now_ms: int,
    outcome: str,
    payload: dict[str, Any],
    gap_ms: int,
    session_ttl_ms: int,
    earlier: list[tuple[str, int]] | None = None,
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [
        job_id,
        attempt,
        node_id,
        now_ms,
        outcome,
        json.dumps(payload),
        gap_ms,
        session_ttl_ms,
        json.dumps([list(e) for e in earlier or []]),
    ]


def parse(reply: list[Any]) -> Delivery:
    """FINISHED: the outcomes due; STALE_JOB: ``reason`` says why (stale_attempt,
    wrong_node, state_<state>); ALREADY_FINISHED, ANSWERED_BEFORE, NO_SUCH_JOB: nothing."""
    code = check(NAME, reply)
    if code == ScriptCode.STALE_JOB:
        return Delivery(code, reason=text(reply[1]))
    return delivery(code, reply)
