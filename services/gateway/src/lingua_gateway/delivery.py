"""Sending the dispatcher's messages to one session's client (``ToSession``, MISSION J6).

Glue between the pure :class:`ReorderBuffer`, the connection's bounded outbound queue and
one event-loop timer: ordered answers go out strictly by utterance index, unordered ones
(``asr_partial``) at once, and a hole that outlives ``result_reorder_timeout_s`` is skipped
so later answers are never held forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lingua_gateway.metrics import Metrics
from lingua_gateway.outbound import Outbound
from lingua_gateway.reorder import ReorderBuffer
from lingua_shared.events import ToSession
from lingua_shared.logs import get_logger

log = get_logger(__name__)


class OrderedSender:
    def __init__(
        self, out: Outbound, timeout_s: float, metrics: Metrics, session_id: str, trace_id: str
    ) -> None:
        self.out = out
        self.metrics = metrics
        self.session_id = session_id
        self.trace_id = trace_id
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
        pushed = self.buffer.push(msg.utterance_index, msg.payload, self._loop.time())
        if pushed.dropped is not None:
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
        for _, payload in pushed.ready:
            self._send(payload, ordered=True)
        self._schedule()

    def _send(self, payload: dict[str, Any], *, ordered: bool) -> None:
        self.metrics.session_delivered.labels(str(ordered).lower()).inc()
        self.out.send(payload)

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
            for _, payload in released.ready:
                self._send(payload, ordered=True)
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
