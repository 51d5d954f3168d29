"""Sending the dispatcher's messages to one session's client (``ToSession``, J6).

Each answer to an utterance (``translation_result`` or ``missing_result``) reaches the client
exactly once; events (``asr_partial``, ``ui_event``) go out at once. Two ways, chosen per
session (``session_spec.DELIVERIES``):

- :class:`ArrivalSender` (lingua's first come, first served): every answer as soon as it
  arrives, a repeated index dropped.
- :class:`OrderedSender`: strictly by utterance index. Redis already releases a session's
  answers in order; this puts back in order the rare pair that two dispatcher replicas
  publish in the other order, and skips a hole after ``result_reorder_timeout_s`` (at least
  the outbox's retry and a second: a publish lost with a dispatcher comes again by then).

An answer leaves the session's outbox in Redis only once the socket has taken it
(``written``: ``outbox_ack``, batched). A copy of an answer already sent (published again by
the outbox, or replayed on a resume) is dropped and acknowledged again once the first copy is
out, so that it is not published again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from lingua_gateway.metrics import Metrics
from lingua_gateway.outbound import Outbound
from lingua_gateway.reorder import DUPLICATE, ReorderBuffer
from lingua_shared.events import ToSession
from lingua_shared.logs import get_logger

log = get_logger(__name__)


class ArrivalSender:
    """Answers in the order they arrive, exactly one per utterance index."""

    def __init__(
        self,
        out: Outbound,
        metrics: Metrics,
        session_id: str,
        trace_id: str,
        written: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.out = out
        self.metrics = metrics
        self.session_id = session_id
        self.trace_id = trace_id
        self.written = written  # the answer to an index is out: acknowledge it
        self.next_index = 0  # the lowest index not answered yet
        self.answered = 0  # how many indices were answered
        self._above: set[int] = set()  # answered indices above next_index

    def resume(self, next_index: int, answered: Iterable[int]) -> None:
        """A resumed session: every index below ``next_index`` and those of ``answered``
        were answered on an earlier connection."""
        self.next_index = next_index
        self._above = {i for i in answered if i >= next_index}
        self.answered = next_index + len(self._above)
        self._advance()

    def _advance(self) -> None:
        while self.next_index in self._above:
            self._above.discard(self.next_index)
            self.next_index += 1

    def deliver(self, msg: ToSession) -> None:
        index = msg.utterance_index
        if not msg.ordered or index is None:
            self._send(msg.payload, ordered=False)
            return
        if index < self.next_index or index in self._above:
            self.metrics.session_dropped.labels(DUPLICATE).inc()
            log.info(
                "gateway.session_answer_dropped",
                session_id=self.session_id,
                trace_id=self.trace_id,
                utterance_index=index,
                reason=DUPLICATE,
                type=msg.payload.get("type"),
            )
            self.out.after_sent(lambda: self.written(index))  # its first copy is out
            return
        self._above.add(index)
        self.answered += 1
        self._advance()
        self._send(msg.payload, ordered=True, index=index)

    def _send(self, payload: dict[str, Any], *, ordered: bool, index: int | None = None) -> None:
        self.metrics.session_delivered.labels(str(ordered).lower()).inc()
        written = self.written
        self.out.send(payload, None if index is None else lambda: written(index))

    def close(self) -> None:
        pass


class OrderedSender:
    def __init__(
        self,
        out: Outbound,
        timeout_s: float,
        metrics: Metrics,
        session_id: str,
        trace_id: str,
        written: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.out = out
        self.metrics = metrics
        self.session_id = session_id
        self.trace_id = trace_id
        self.written = written  # the answer to an index is out: acknowledge it
        self.buffer: ReorderBuffer[dict[str, Any]] = ReorderBuffer(timeout_s)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    def deliver(self, msg: ToSession) -> None:
        if not msg.ordered or msg.utterance_index is None:
            if msg.ordered:
                log.warning(
                    "gateway.session_ordered_without_index",
                    session_id=self.session_id,
                    trace_id=self.trace_id,
                    type=msg.payload.get("type"),
                )
            self._send(msg.payload, ordered=False)
            return
        missing_from = self.buffer.next_index
        index = msg.utterance_index
        pushed = self.buffer.push(index, msg.payload, self._loop.time())
        if pushed.dropped is not None:
            if index < self.buffer.next_index:
                # sent before (or skipped by a release): no outbox should publish it again
                self.out.after_sent(lambda: self.written(index))
            self.metrics.session_dropped.labels(pushed.dropped).inc()
            log.info(
                "gateway.session_answer_dropped",
                session_id=self.session_id,
                trace_id=self.trace_id,
                utterance_index=msg.utterance_index,
                reason=pushed.dropped,
                type=msg.payload.get("type"),
            )
            return
        if pushed.skipped:
            self._count_release(pushed.skipped, missing_from)
        for i, payload in pushed.ready:
            self._send(payload, ordered=True, index=i)
        self._schedule()

    def resume(self, next_index: int, answered: Iterable[int] = ()) -> None:
        """A resumed session: every index below ``next_index`` was answered before (an ordered
        session answers nothing above it, so ``answered`` has nothing to add)."""
        self.buffer.next_index = next_index

    @property
    def next_index(self) -> int:
        return self.buffer.next_index

    @property
    def answered(self) -> int:
        """Indices answered or skipped: everything below the buffer's next index."""
        return self.buffer.next_index

    def _send(self, payload: dict[str, Any], *, ordered: bool, index: int | None = None) -> None:
        self.metrics.session_delivered.labels(str(ordered).lower()).inc()
        written = self.written
        self.out.send(payload, None if index is None else lambda: written(index))

    def _schedule(self) -> None:
        """Keep exactly one timer, set to the oldest waiting answer's deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.buffer.deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiting_from = self.buffer.next_index
        released = self.buffer.expire(self._loop.time())
        if released.ready:
            self._count_release(released.skipped, waiting_from)
            for i, payload in released.ready:
                self._send(payload, ordered=True, index=i)
        self._schedule()

    def _count_release(self, skipped: int, missing_from: int) -> None:
        self.metrics.reorder_releases.inc()
        self.metrics.reorder_skipped.inc(skipped)
        log.warning(
            "gateway.reorder_released",
            session_id=self.session_id,
            trace_id=self.trace_id,
            utterance_index=missing_from,
            skipped=skipped,
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
