"""``job_ack.lua``: the node took the job: commit its reservation into a running slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import CodeResult, text
from lingua_shared.scripts.codes import check

NAME = "job_ack"


@dataclass(frozen=True)
class Ack(CodeResult):
    """COMMITTED or ALREADY_ACKED: ``value`` is the job's session; STALE_JOB: ``value`` is
    why (stale_attempt, wrong_node, state_<state>); NO_SUCH_JOB."""

    @property
    def session_id(self) -> str:
        return self.value if self.code >= 0 else ""


Result = Ack


def args(
    keys: Keys, *, job_id: str, attempt: int, node_id: str, now_ms: int, deadline_ms: int
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [job_id, attempt, node_id, now_ms, deadline_ms]


def parse(reply: list[Any]) -> Ack:
    return Ack(check(NAME, reply), text(reply[1]))
