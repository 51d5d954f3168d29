"""``job_release.lua``: take a job back from its node so it can be dispatched again, a
bounded number of times."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import text
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "job_release"


@dataclass(frozen=True)
class Release:
    """RELEASED (``attempt`` = the next one) or EXHAUSTED (``attempt`` = the last one): the
    node that had the job and its connection, to send it ``job_cancel``. NOT_CURRENT:
    ``state`` is the job's state. NO_SUCH_JOB."""

    code: ScriptCode
    attempt: int = 0
    node_id: str = ""
    gateway_id: str = ""
    conn_id: str = ""
    state: str = ""


Result = Release


def args(
    keys: Keys, *, job_id: str, attempt: int, reason: str, now_ms: int, max_attempts: int
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [job_id, attempt, reason, now_ms, max_attempts]


def parse(reply: list[Any]) -> Release:
    code = check(NAME, reply)
    if code in (ScriptCode.RELEASED, ScriptCode.EXHAUSTED):
        node_id, gateway_id, conn_id = (text(v) for v in reply[2:5])
        return Release(code, int(reply[1]), node_id, gateway_id, conn_id)
    return Release(code, state=text(reply[1]))
