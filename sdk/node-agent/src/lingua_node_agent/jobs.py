"""The job handler interface: what an engine implements to serve jobs through the agent.

The agent owns the protocol (ack, dedup, capacity, results, draining); a handler only turns
one ``job_assign`` into a transcript and a translation. Keeping that boundary small is what
lets the same agent drive a real ASR/NMT stack, the simulator, or a test double.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lingua_shared.protocol import JobAssign, NodeAsrPartial


@dataclass
class JobOutcome:
    """What a handler returns for one job; becomes the ``job_result``.

    A handler reports an expected failure (e.g. a model not loaded) by returning
    ``JobOutcome.failure(...)``; an exception is also turned into a failed result, with
    ``INTERNAL_ERROR``. ``extra`` is merged into the ``job_result`` as additional fields
    (e.g. ``service_timings``), which the protocol allows.
    """

    text_asr: str = ""
    text_translated: str = ""
    tts_audio: str | None = None
    tts_format: str | None = None
    success: bool = True
    error_code: str | None = None
    error_message: str = ""
    error_details: dict[str, Any] | None = None
    processing_time_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failure(
        cls, code: str, message: str = "", details: dict[str, Any] | None = None
    ) -> JobOutcome:
        return cls(success=False, error_code=code, error_message=message, error_details=details)


class JobContext:
    """Per-job services the agent gives a handler: who we are, and a way to stream partials.

    ``partials`` is False when this job takes no ``asr_partial`` (the lingua profile sends
    them only for jobs with ``enable_streaming_asr: true``, as lingua's agent does); then
    :meth:`partial` is a no-op.
    """

    __slots__ = ("_send", "job", "node_id", "partials")

    def __init__(
        self,
        job: JobAssign,
        node_id: str,
        send: Callable[[NodeAsrPartial], Awaitable[bool]],
        partials: bool = True,
    ) -> None:
        self.job = job
        self.node_id = node_id
        self.partials = partials
        self._send = send

    async def partial(self, text: str, is_final: bool = False) -> bool:
        """Send an ``asr_partial`` for this job; ``False`` when no connection could take it
        or this job takes no partials (partials are best effort: the final ``job_result`` is
        what counts)."""
        if not self.partials:
            return False
        job = self.job
        return await self._send(
            NodeAsrPartial(
                job_id=job.job_id,
                node_id=self.node_id,
                session_id=job.session_id,
                utterance_index=job.utterance_index,
                text=text,
                is_final=is_final,
                trace_id=job.trace_id,
            )
        )


class JobHandler(Protocol):
    """Implemented by whatever does the work. ``handle`` may be cancelled (``job_cancel``,
    or a drain that timed out); it should let ``asyncio.CancelledError`` propagate."""

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome: ...
