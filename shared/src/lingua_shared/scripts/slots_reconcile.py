"""``slots_reconcile.lua``: recount nodes' reserved and running slots from their live jobs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts.codes import ScriptCode, check

NAME = "slots_reconcile"


@dataclass(frozen=True)
class Recount:
    """RECOUNTED: ``fixed`` nodes had their counts rewritten, ``dropped`` job-set members
    (jobs gone or moved on) were removed."""

    code: ScriptCode
    fixed: int
    dropped: int


Result = Recount


def args(keys: Keys, *, node_ids: list[str]) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [json.dumps(node_ids)]


def parse(reply: list[Any]) -> Recount:
    code = check(NAME, reply)
    return Recount(code, int(reply[1]), int(reply[2]))
