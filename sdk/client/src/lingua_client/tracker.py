"""Per-utterance bookkeeping: which index each utterance got, when it ended, what answered.

The gateway never tells the client "your utterance got index 3"; it numbers a session's
utterances from 0, one per final frame (docs/protocol.md), and names the index only in the
answer. So the client predicts the index by counting its own finals, remembers when each
final left, and measures each answer's latency from there. The same records say whether the
gateway kept its promise of exactly one answer (a translation, or a missing_result, which a
failed utterance gets) per index; an ``error`` naming an utterance counts as its answer too.
Pure (the caller passes the clock), so the rules are tested without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANSWER_KINDS = frozenset({"translation_result", "missing_result", "error"})


@dataclass
class UtteranceRecord:
    index: int
    duration_ms: float
    started_at: float
    final_at: float | None = None  # None while its audio is still being sent
    answers: list[str] = field(default_factory=list)  # message types, in arrival order
    answered_at: float | None = None

    @property
    def latency_ms(self) -> float | None:
        """From the final frame to the first answer."""
        if self.final_at is None or self.answered_at is None:
            return None
        return max(0.0, (self.answered_at - self.final_at) * 1000)


class UtteranceTracker:
    def __init__(self) -> None:
        self.records: dict[int, UtteranceRecord] = {}
        self.next_index = 0
        self.unexpected: list[tuple[int, str]] = []  # answers for an index never sent

    def begin(self, duration_ms: float, now: float) -> int:
        """Reserve the index the server will give the next utterance."""
        index = self.next_index
        self.next_index += 1
        self.records[index] = UtteranceRecord(index, duration_ms, now)
        return index

    def finish(self, index: int, now: float) -> None:
        """The utterance's final frame (or whole message) has been sent."""
        self.records[index].final_at = now

    def latency_ms(self, index: int | None, now: float) -> float | None:
        """Time since ``index``'s final frame; ``None`` when no final was sent for it."""
        rec = self.records.get(index) if index is not None else None
        if rec is None or rec.final_at is None:
            return None
        return max(0.0, (now - rec.final_at) * 1000)

    def answer(self, index: int, kind: str, now: float) -> float | None:
        """Record an answer for ``index``; returns its latency (``None`` if unknown index)."""
        rec = self.records.get(index)
        if rec is None:
            self.unexpected.append((index, kind))
            return None
        latency = self.latency_ms(index, now)
        rec.answers.append(kind)
        if rec.answered_at is None:
            rec.answered_at = now
        return latency

    @property
    def sent(self) -> int:
        """Utterances whose final frame went out."""
        return sum(1 for r in self.records.values() if r.final_at is not None)

    def pending(self) -> list[int]:
        """Sent utterances that have no answer yet."""
        return [i for i, r in sorted(self.records.items()) if r.final_at is not None
                and not r.answers]  # fmt: skip

    def duplicates(self) -> list[int]:
        return [i for i, r in sorted(self.records.items()) if len(r.answers) > 1]

    def all_answered(self) -> bool:
        return not self.pending()

    def exactly_once(self) -> bool:
        """Every utterance sent got exactly one answer, and nothing answered an unsent index."""
        return (
            all(r.final_at is not None and len(r.answers) == 1 for r in self.records.values())
            and not self.unexpected
        )
