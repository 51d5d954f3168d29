"""``node_lost.lua``: a node's connection ended: take back, in one call, every job it holds,
fenced by connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import text
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "node_lost"


@dataclass(frozen=True)
class TakenBack:
    """One job taken back: RELEASED (``attempt`` = the next one: dispatch it) or EXHAUSTED
    (``attempt`` = the last one: fail it)."""

    job_id: str
    code: ScriptCode
    attempt: int


@dataclass(frozen=True)
class Lost:
    """JOBS_TAKEN with the jobs taken back (none on a replay), or NEWER_CONNECTION
    (``conn_id``: the connection the record names)."""

    code: ScriptCode
    jobs: list[TakenBack] = field(default_factory=list)
    conn_id: str = ""


Result = Lost


def args(
    keys: Keys, *, node_id: str, conn_id: str, now_ms: int, max_attempts: int
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [node_id, conn_id, now_ms, max_attempts]


def parse(reply: list[Any]) -> Lost:
    code = check(NAME, reply)
    if code != ScriptCode.JOBS_TAKEN:
        return Lost(code, conn_id=text(reply[1]))
    rest = reply[1:]
    jobs = [
        TakenBack(
            text(rest[i]),
            ScriptCode.RELEASED if int(rest[i + 1]) == 1 else ScriptCode.EXHAUSTED,
            int(rest[i + 2]),
        )
        for i in range(0, len(rest) - 2, 3)
    ]
    return Lost(code, jobs)
