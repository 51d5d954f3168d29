"""Admission, deduplication and execution of jobs on one node.

The scheduler may redispatch a job (MISSION J5) and the network may replay a frame, so the
node must never run the same attempt twice nor two jobs for one utterance at once: like the
original lingua agent it answers those with a failed ``job_result`` (``INVALID_MESSAGE``). It
also enforces ``max_concurrent_jobs`` and refuses new work while draining. The runner outlives
any single connection: a job started before a reconnect still reports on the new one, and a
result finished while no connection was up (a gateway replica restarting) is kept and sent
once the node is registered again, instead of being lost with the old socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lingua_node_agent.jobs import JobContext, JobHandler, JobOutcome
from lingua_shared.protocol import ErrorCode, JobAck, JobAssign, JobResult, WireModel

Send = Callable[[WireModel], Awaitable[bool]]

CANCELLED_BY_GATEWAY = "cancelled by job_cancel"
MAX_UNSENT = 1024  # results kept for the next connection; beyond that the oldest are dropped


@dataclass(eq=False)
class _Running:
    job: JobAssign
    node_id: str
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None


class JobRunner:
    """Runs jobs through a :class:`JobHandler` and reports them; counters are for status."""

    def __init__(
        self,
        handler: JobHandler,
        capacity: int,
        send: Send,
        log: logging.LoggerAdapter[Any] | logging.Logger,
        recent_limit: int = 4096,
    ) -> None:
        self.handler = handler
        self.capacity = capacity
        self.accepting = True
        self.completed = 0
        self.failed = 0
        self.rejected = 0
        self._send = send
        self._log = log
        self._running: dict[str, _Running] = {}
        self._utterances: set[tuple[str, int]] = set()
        self._recent: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._recent_limit = recent_limit
        self._idle = asyncio.Event()
        self._idle.set()
        self._unsent: list[JobResult] = []

    @property
    def running_jobs(self) -> int:
        return len(self._running)

    def _refusal(self, job: JobAssign) -> tuple[str, str] | None:
        running = self._running.get(job.job_id)
        if (job.job_id, job.attempt_id) in self._recent or (
            running is not None and running.job.attempt_id == job.attempt_id
        ):
            return ErrorCode.INVALID_MESSAGE, f"duplicate job {job.job_id} attempt {job.attempt_id}"
        if (job.session_id, job.utterance_index) in self._utterances:
            return ErrorCode.INVALID_MESSAGE, (
                f"utterance {job.session_id}#{job.utterance_index} already has a job in flight"
            )
        if not self.accepting:
            return ErrorCode.NODE_UNAVAILABLE, "node is draining"
        if len(self._running) >= self.capacity:
            return ErrorCode.NODE_OVERLOADED, f"all {self.capacity} job slots are busy"
        return None

    async def submit(self, job: JobAssign, node_id: str) -> bool:
        """Admit ``job`` (ack it and start the handler) or refuse it with a failed result."""
        refusal = self._refusal(job)
        if refusal is not None:
            code, message = refusal
            self.rejected += 1
            self._log.warning(
                "job refused", extra={"job_id": job.job_id, "code": code, "reason": message}
            )
            # "refused" tells the gateway this attempt never ran here: for a replayed attempt
            # the ids are those of the original, which must not be mistaken for its failure.
            refused = JobOutcome.failure(code, message, {"refused": True})
            await self._send(self._result(job, node_id, refused, 0.0))
            return False
        run = _Running(job=job, node_id=node_id)
        self._running[job.job_id] = run
        self._utterances.add((job.session_id, job.utterance_index))
        self._idle.clear()
        await self._send(
            JobAck(
                job_id=job.job_id,
                attempt_id=job.attempt_id,
                node_id=node_id,
                session_id=job.session_id,
                trace_id=job.trace_id,
            )
        )
        run.task = asyncio.create_task(self._execute(run), name=f"job-{job.job_id}")
        return True

    async def _execute(self, run: _Running) -> None:
        job = run.job
        started = time.perf_counter()
        try:
            try:
                outcome = await self.handler.handle(job, JobContext(job, run.node_id, self._send))
                if not isinstance(outcome, JobOutcome):
                    outcome = JobOutcome.failure(
                        ErrorCode.INTERNAL_ERROR,
                        f"handler returned {type(outcome).__name__}, not JobOutcome",
                    )
            except asyncio.CancelledError:
                if run.cancel_reason is None:
                    raise
                if run.cancel_reason == CANCELLED_BY_GATEWAY:
                    return
                outcome = JobOutcome.failure(ErrorCode.NODE_UNAVAILABLE, run.cancel_reason)
            except Exception as exc:
                self._log.exception("job handler failed", extra={"job_id": job.job_id})
                outcome = JobOutcome.failure(
                    ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
                )
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if outcome.success:
                self.completed += 1
            else:
                self.failed += 1
            await self._report(self._result(job, run.node_id, outcome, elapsed_ms))
        finally:
            self._release(run)

    async def _report(self, result: JobResult) -> None:
        """Send a result, or keep it for the next connection when there is none."""
        if await self._send(result):
            return
        self._unsent.append(result)
        if len(self._unsent) > MAX_UNSENT:
            lost = self._unsent.pop(0)
            self._log.error("unsent result dropped", extra={"job_id": lost.job_id})
        self._log.info("result kept for the next connection", extra={"job_id": result.job_id})

    @property
    def unsent(self) -> int:
        """Results waiting for a connection."""
        return len(self._unsent)

    async def flush_unsent(self) -> int:
        """Send the results kept while disconnected (called once registered again)."""
        pending, self._unsent = self._unsent, []
        sent = 0
        for i, result in enumerate(pending):
            if not await self._send(result):
                self._unsent = pending[i:] + self._unsent
                break
            sent += 1
        if sent:
            self._log.info("kept results sent", extra={"results": sent})
        return sent

    def _release(self, run: _Running) -> None:
        job = run.job
        if self._running.get(job.job_id) is run:
            del self._running[job.job_id]
        self._utterances.discard((job.session_id, job.utterance_index))
        self._recent[(job.job_id, job.attempt_id)] = None
        while len(self._recent) > self._recent_limit:
            self._recent.popitem(last=False)
        if not self._running:
            self._idle.set()

    @staticmethod
    def _result(job: JobAssign, node_id: str, out: JobOutcome, elapsed_ms: float) -> JobResult:
        fields: dict[str, Any] = {
            "job_id": job.job_id,
            "attempt_id": job.attempt_id,
            "node_id": node_id,
            "session_id": job.session_id,
            "utterance_index": job.utterance_index,
            "success": out.success,
            "trace_id": job.trace_id,
            "processing_time_ms": round(
                out.processing_time_ms if out.processing_time_ms is not None else elapsed_ms, 3
            ),
        }
        if out.success:
            fields.update(text_asr=out.text_asr, text_translated=out.text_translated)
            if out.tts_audio is not None:
                fields.update(tts_audio=out.tts_audio, tts_format=out.tts_format or "opus")
        else:
            code = out.error_code or ErrorCode.INTERNAL_ERROR
            fields["error"] = {"code": str(code), "message": out.error_message}
            if out.error_details:
                fields["error"]["details"] = out.error_details
        fields.update(out.extra)
        return JobResult.model_validate(fields)

    def cancel(self, job_id: str) -> bool:
        """Stop a job the gateway withdrew (``job_cancel``); no result is sent for it."""
        run = self._running.get(job_id)
        if run is None or run.task is None:
            return False
        run.cancel_reason = CANCELLED_BY_GATEWAY
        run.task.cancel()
        return True

    async def wait_idle(self, limit_s: float) -> bool:
        """Wait until no job is in flight; ``False`` if ``limit_s`` seconds pass first."""
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def abort(self, reason: str, grace_s: float = 2.0) -> None:
        """Cancel every job in flight; each reports a ``NODE_UNAVAILABLE`` failure if it can.

        ``grace_s`` bounds the wait for handlers that ignore cancellation, so shutdown ends.
        """
        tasks = []
        for run in list(self._running.values()):
            if run.task is not None and not run.task.done():
                # Cancel once: a second cancel would interrupt the failure report itself.
                if run.cancel_reason is None:
                    run.cancel_reason = reason
                    run.task.cancel()
                tasks.append(run.task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                self._log.error("job handler ignored cancellation", extra={"task": task.get_name()})
