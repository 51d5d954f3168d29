"""``nodes_read.lua``: chosen fields of a batch of node records in one call (display)."""

from __future__ import annotations

import json
from typing import Any

from lingua_shared.keys import Keys
from lingua_shared.scripts._reply import rejected_list

NAME = "nodes_read"
Result = list[list[Any]]  # one list of field values per node id (None: missing)


def args(keys: Keys, *, field_names: list[str], node_ids: list[str]) -> tuple[list[str], list[Any]]:
    return [keys.prefix], [json.dumps(field_names), json.dumps(node_ids)]


def parse(reply: list[Any]) -> list[list[Any]]:
    rejected_list(NAME, reply)
    return reply
