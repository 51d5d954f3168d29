"""``job_create.lua``: create the job of a request key exactly once, keeping its audio."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import CodeResult, text
from lingua_shared.scripts.codes import check

NAME = "job_create"


@dataclass(frozen=True)
class Created(CodeResult):
    """JOB_CREATED, or DUPLICATE: ``job_id`` is then the job the request key already has."""

    @property
    def job_id(self) -> str:
        return self.value


Result = Created


def args(
    keys: Keys,
    *,
    request_key: str,
    job_id: str,
    now_ms: int,
    ttl_ms: int,
    fields: dict[str, Any],
    audio: str,
) -> tuple[list[str], list[Any]]:
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    return [keys.prefix], [request_key, job_id, now_ms, ttl_ms, json.dumps(flat), audio]


def parse(reply: list[Any]) -> Created:
    return Created(check(NAME, reply), text(reply[1]))
