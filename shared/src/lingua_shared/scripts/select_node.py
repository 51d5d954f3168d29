"""``select_node.lua``: pick the least loaded eligible node for a job attempt and take its
slot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import text
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "select_node"


@dataclass(frozen=True)
class Selection:
    """RESERVED: the node, its connection, the shard and the job's new state (``assigned``
    waits for job_ack, ``acked`` is accepted at assignment). NO_NODE: ``reason``
    (no_covering_pool | no_free_slot) and whether the job now ``waiting`` for a slot.
    NOT_WAITING: ``reason`` is the job's state. NO_SUCH_JOB."""

    code: ScriptCode
    node_id: str = ""
    gateway_id: str = ""
    conn_id: str = ""
    shard_id: str = ""
    state: str = ""
    reason: str = ""
    waiting: bool = False


Result = Selection


def args(
    keys: Keys,
    *,
    job_id: str,
    attempt: int,
    now_ms: int,
    lease_ms: int,
    pair_src: str,
    pair_tgt: str,
    services: list[str],
    policy: str,
    candidates: int,
    wait_until_ms: int,
    retry_ms: int,
    deadline_ms: int = 30_000,
    tenant: str = "",
) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [
        job_id,
        attempt,
        now_ms,
        lease_ms,
        pair_src,
        pair_tgt,
        json.dumps(services),
        policy,
        candidates,
        wait_until_ms,
        retry_ms,
        deadline_ms,
        tenant,
    ]


def parse(reply: list[Any]) -> Selection:
    code = check(NAME, reply)
    if code == ScriptCode.RESERVED:
        node_id, gateway_id, conn_id, shard_id, state = (text(v) for v in reply[1:6])
        return Selection(code, node_id, gateway_id, conn_id, shard_id, state)
    if code == ScriptCode.NO_NODE:
        return Selection(code, reason=text(reply[1]), waiting=int(reply[2]) == 1)
    return Selection(code, reason=text(reply[1]))
