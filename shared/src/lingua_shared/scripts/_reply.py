"""Reply pieces several scripts share: text values, and the outcomes a session is due."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lingua_shared.scripts.codes import ScriptCode


def text(v: Any) -> str:
    """A reply value as text (replies are bytes unless the client decodes them)."""
    return v.decode() if isinstance(v, bytes) else str(v)


def flat_counts(raw: list[Any]) -> dict[str, int]:
    """``[label, count, ...]`` as a dict."""
    return {text(raw[i]): int(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}


@dataclass(frozen=True)
class CodeResult:
    """An outcome and the one value its reply carries (see each script's ``Result``)."""

    code: ScriptCode
    value: str = ""


@dataclass(frozen=True)
class Delivery:
    """What ``job_finish``, ``gap_expire`` and ``utterance_fail`` release for one session:
    the outcomes now due, in the order they leave (index, client message), and the
    session's connection. ``reason`` says why a stale ``job_finish`` was dropped. Every
    outcome listed is also in the session's outbox until a gateway has written it to the
    client (``outbox_ack``); a replayed ``job_finish`` (``ALREADY_FINISHED``) lists those of
    its outcomes that are still there, to publish again."""

    code: ScriptCode
    gateway_id: str = ""
    conn_id: str = ""
    items: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    reason: str = ""

    @property
    def released(self) -> bool:
        """The script stored its outcome and ``items`` are what is now due (maybe none)."""
        return self.code in (ScriptCode.FINISHED, ScriptCode.GAP_ANSWERED, ScriptCode.ANSWERED)


def delivery(code: ScriptCode, reply: list[Any]) -> Delivery:
    """``{code, gateway_id, conn_id, idx1, payload1, ...}``, or ``{code, ""}`` with no outcomes
    (a replayed ``job_finish`` answers ``0`` with the outcomes still to publish)."""
    if len(reply) < 3:
        return Delivery(code)
    flat = reply[3:]
    items = [(int(flat[i]), json.loads(flat[i + 1])) for i in range(0, len(flat), 2)]
    return Delivery(code, text(reply[1]), text(reply[2]), items)


def rejected_list(script: str, reply: list[Any]) -> None:
    """For a script that answers a plain list on success: raise on ``{-1, field}``."""
    if len(reply) == 2 and isinstance(reply[0], int) and reply[0] == ScriptCode.INVALID_INPUT:
        raise ScriptCode.INVALID_INPUT.error(script, reply[1])
