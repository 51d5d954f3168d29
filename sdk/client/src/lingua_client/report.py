"""The CLI's output: one line per event as it arrives, then a summary and the verdict.

Kept apart from the CLI's control flow so the formats (which scripts and humans parse) are
defined in one place and tested directly. The verdict is the gateway's promise
(docs/protocol.md): every utterance ends in exactly one ``translation_result`` or
``missing_result`` for its index (a failed one: ``missing_result`` reason ``error``, with a
``ui_event`` saying why). ``strict`` additionally demands that every answer be a
translation, for smoke tests of a whole deployment.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lingua_client.events import SessionEvent
from lingua_client.tracker import UtteranceTracker
from lingua_shared.protocol import ErrorMessage
from lingua_shared.protocol.session import (
    ClientAsrPartial,
    MissingResult,
    TranslationResult,
    UiEvent,
)


def quote(text: str, limit: int = 200) -> str:
    """A one-line, double-quoted rendering (newlines and quotes escaped, long text cut)."""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return json.dumps(text, ensure_ascii=False)


def event_line(ev: SessionEvent) -> str:
    """``#<index>  <latency> ms  asr="..."  ->  "..."`` (or the partial, missing, error)."""
    index = "#-" if ev.utterance_index is None else f"#{ev.utterance_index}"
    latency = "   ? ms" if ev.latency_ms is None else f"{ev.latency_ms:4.0f} ms"
    msg = ev.message
    if isinstance(msg, TranslationResult):
        body = f"asr={quote(msg.text_asr)}  ->  {quote(msg.text_translated)}"
    elif isinstance(msg, ClientAsrPartial):
        body = f"partial{' (final)' if msg.is_final else ''} {quote(msg.text)}"
    elif isinstance(msg, MissingResult):
        code = f", {msg.error_code}" if msg.error_code else ""
        body = f"missing ({msg.reason}{code})"
    elif isinstance(msg, UiEvent):
        body = f"event {msg.event} {msg.error_code or ''}: {quote(msg.hint or '')}"
    elif isinstance(msg, ErrorMessage):
        body = f"error {msg.code}: {quote(msg.message)}"
    else:  # pragma: no cover - events only wrap the five types above
        body = msg.type
    return f"{index}  {latency}  {body}"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    sent: int
    results: int
    errors: int
    missing: int
    unanswered: list[int]
    duplicates: list[int]
    unexpected: int  # answers naming an index this client never sent
    session_errors: int  # errors naming no utterance
    p50_ms: float | None
    max_ms: float | None
    exactly_once: bool
    all_translated: bool

    def ok(self, strict: bool = False) -> bool:
        return self.exactly_once and (self.all_translated or not strict)

    def line(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} ms"

        parts = [
            f"summary: {self.sent} utterances sent, {self.results} results, {self.errors} errors, "
            f"{self.missing} missing",
            f"latency p50 {ms(self.p50_ms)}, max {ms(self.max_ms)}",
        ]
        if self.unanswered:
            parts.append("no answer for " + " ".join(f"#{i}" for i in self.unanswered))
        if self.duplicates:
            parts.append("answered twice: " + " ".join(f"#{i}" for i in self.duplicates))
        if self.unexpected:
            parts.append(f"{self.unexpected} answers for unsent utterances")
        if self.session_errors:
            parts.append(f"{self.session_errors} session errors")
        return "; ".join(parts)

    def to_json(self, strict: bool = False) -> dict[str, Any]:
        return {"type": "summary", **vars(self), "ok": self.ok(strict)}


def summarize(tracker: UtteranceTracker, session_errors: int = 0) -> Summary:
    kinds = [kind for rec in tracker.records.values() for kind in rec.answers]
    latencies = [r.latency_ms for r in tracker.records.values() if r.latency_ms is not None]
    answered = [r for r in tracker.records.values() if r.answers]
    return Summary(
        sent=tracker.sent,
        results=kinds.count("translation_result"),
        errors=kinds.count("error"),
        missing=kinds.count("missing_result"),
        unanswered=tracker.pending(),
        duplicates=tracker.duplicates(),
        unexpected=len(tracker.unexpected),
        session_errors=session_errors,
        p50_ms=percentile(latencies, 50),
        max_ms=max(latencies) if latencies else None,
        exactly_once=tracker.exactly_once() and tracker.sent > 0,
        all_translated=all(r.answers == ["translation_result"] for r in answered),
    )
