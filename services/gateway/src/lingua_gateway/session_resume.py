"""Taking up a session on a new connection (``session_init`` with ``resume_session_id``).

A client whose connection was lost (its gateway replica died, a network change) resumes the
same session on any replica: ``session_bind`` binds the record to the new connection and
hands back what the gateway needs to go on: the session's spec, its delivery cursor, the
first-come answered set and its outbox (answers released but not yet written to a client).
Pure functions here; the connection applies them (``session_endpoint``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from lingua_gateway.session_spec import ARRIVAL, DELIVERIES, SessionSpec
from lingua_shared.errors import InvalidMessage, InvalidSession
from lingua_shared.protocol import SAMPLE_RATE

MAX_RESUME_RECEIVED = 1024  # indices a resuming client may list as already answered
MAX_INDEX = 2**31 - 1
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # what session_bind accepts, and less


def check_resume(session_id: str, received: list[int] | None) -> set[int]:
    """The resume request's fields, or a typed error; the indices the client already has."""
    if not SESSION_ID_RE.fullmatch(session_id):
        raise InvalidSession(
            "resume_session_id is not a session id", {"field": "resume_session_id"}
        )
    got = received or []
    if len(got) > MAX_RESUME_RECEIVED or any(not 0 <= i <= MAX_INDEX for i in got):
        raise InvalidMessage(
            f"resume_received: at most {MAX_RESUME_RECEIVED} utterance indices (0 .. 2^31-1)",
            {"field": "resume_received"},
        )
    return set(got)


def spec_from_record(record: dict[str, str]) -> SessionSpec:
    """The spec a session was opened with, as its record keeps it."""
    try:
        options = json.loads(record.get("options") or "{}")
    except ValueError:
        options = {}
    delivery = record.get("delivery") or ARRIVAL
    return SessionSpec(
        mode=record.get("mode") or "one_way",
        src_lang=record.get("src_lang") or "",
        tgt_lang=record.get("tgt_lang") or "",
        lang_a=record.get("lang_a") or None,
        lang_b=record.get("lang_b") or None,
        audio_format=record.get("audio_format") or "opus",
        sample_rate=int(record.get("sample_rate") or SAMPLE_RATE),
        trace_id=record.get("trace_id") or "",
        delivery=delivery if delivery in DELIVERIES else ARRIVAL,
        tenant_id=record.get("tenant") or None,
        options=options if isinstance(options, dict) else {},
    )


@dataclass
class Resume:
    """Where delivery goes on: ``next_index`` (every index below it was answered) and the
    answered indices above it; the outbox answers to send (index order) and those the client
    already has (acknowledged, not sent); the next utterance's index."""

    next_index: int
    answered: set[int]
    send: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    next_utterance: int = 0


def plan_resume(
    record: dict[str, str],
    sent: set[int],
    outbox: list[tuple[int, dict[str, Any]]],
    received: set[int],
) -> Resume:
    """What Redis released (below ``next_deliver``, or in the first-come ``sent`` set) was
    written to a client unless it is still in the outbox; what the client lists it has."""
    cursor = int(record.get("next_deliver") or 0)
    boxed = {i for i, _ in outbox}
    pending = boxed - received
    lo = cursor
    while lo in sent or lo in received:
        lo += 1
    next_index = min(pending | {lo})
    answered = (
        {i for i in sent | received if i >= next_index}
        | set(range(next_index, min(cursor, next_index + 100_000)))
    ) - pending
    highest = max(boxed | sent | received | {cursor - 1}, default=-1)
    return Resume(
        next_index=next_index,
        answered=answered,
        send=sorted((i, p) for i, p in outbox if i in pending),
        already=sorted(boxed & received),
        next_utterance=max(highest + 1, int(record.get("next_utterance") or 0)),
    )
