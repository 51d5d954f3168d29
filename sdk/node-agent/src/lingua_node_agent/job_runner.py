"""Admission, deduplication, ordering and execution of jobs on one node.

The scheduler may redispatch a job (requirement J5) and the network may replay a frame, so the
node must never run the same attempt twice nor two jobs for one utterance at once: like the
original lingua agent it answers those with a failed ``job_result`` (``INVALID_MESSAGE``). It
also enforces ``max_concurrent_jobs`` and refuses new work while draining. The runner outlives
any single connection: a job started before a reconnect still reports on the new one, and a
result finished while no connection was up (a gateway replica restarting) is kept and sent
once the node is registered again, instead of being lost with the old socket.

**Order within a session.** A session's jobs run one after another, in the order of their
``job_assign``, and their results are sent in that order; different sessions run at the same
time. The scheduler relies on it: when a node answers a later job of a session, the session's
earlier jobs on that node are finished. Each admitted job waits for the session's previous
job (a chain of tasks, one link per job), and a queued job holds a slot of ``capacity`` just
as a running one does.

**The lingua profile** (``lingua=True``) does what lingua's own agent does instead: no
``job_ack``; a job id ever seen by this process, or a second job for a ``(session_id,
utterance_index)``, is refused with ``PROCESSING_ERROR`` and lingua's exact messages; no
capacity or draining refusals (lingua's agent takes every job); a handler exception is a
``PROCESSING_ERROR``; a successful result whose ``text_asr`` (whitespace-normalised) equals
the last text sent for its session is withheld, nothing is sent for it; a result that finds
no connection is dropped, not kept; jobs cancelled by a shutdown send nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from lingua_node_agent.jobs import JobContext, JobHandler, JobOutcome
from lingua_shared.protocol import ErrorCode, JobAck, JobAssign, JobResult, WireModel

Send = Callable[[WireModel | dict[str, Any]], Awaitable[bool]]

CANCELLED_BY_GATEWAY = "cancelled by job_cancel"
MAX_UNSENT = 1024  # results kept for the next connection; beyond that the oldest are dropped

# lingua's agent: its error code for every failure it reports itself, and its refusals
PROCESSING_ERROR = "PROCESSING_ERROR"
DUPLICATE_JOB_ID = "DUPLICATE_JOB_ID: job_id already processed by this node"
DUPLICATE_UTTERANCE_INDEX = (
    "DUPLICATE_UTTERANCE_INDEX: another job already accepted for this session_id and "
    "utterance_index"
)
# What the lingua profile remembers "for ever" (lingua keeps unbounded sets; a simulator of
# thousands of nodes cannot): job ids and utterance slots per node, sessions' last texts.
LINGUA_MEMORY = 100_000
LINGUA_SESSIONS = 4096


def normalize_text(text: str) -> str:
    """Runs of whitespace to one space, trimmed (lingua's comparison of texts)."""
    return " ".join(text.split())


def _remember(memory: OrderedDict[Any, Any], key: Hashable, value: Any, limit: int) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)


@dataclass(eq=False)
class _Running:
    job: JobAssign
    node_id: str
    arrived: float  # perf_counter() at admission
    prev: asyncio.Task[None] | None = None  # the session's previous job: it goes first
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    freed: bool = False  # its slot is given back (its task may still hold the session's turn)


class JobRunner:
    """Runs jobs through a :class:`JobHandler` and reports them; counters are for status.

    ``running_jobs`` counts every admitted job, running or queued behind its session.
    ``withheld`` and ``dropped`` count results the lingua profile did not send (a repeated
    text; no connection).
    """

    def __init__(
        self,
        handler: JobHandler,
        capacity: int,
        send: Send,
        log: logging.LoggerAdapter[Any] | logging.Logger,
        recent_limit: int = 4096,
        *,
        lingua: bool = False,
    ) -> None:
        self.handler = handler
        self.capacity = capacity
        self.lingua = lingua
        self.accepting = True
        self.completed = 0
        self.failed = 0
        self.rejected = 0
        self.withheld = 0
        self.dropped = 0
        self._send = send
        self._log = log
        self._running: dict[str, _Running] = {}
        self._utterances: set[tuple[str, int]] = set()
        self._recent: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._recent_limit = recent_limit
        self._tails: dict[str, _Running] = {}  # session -> its last admitted job
        self._idle = asyncio.Event()
        self._idle.set()
        self._unsent: list[JobResult] = []
        # lingua profile
        self._seen_jobs: OrderedDict[str, None] = OrderedDict()
        self._seen_slots: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._last_text: OrderedDict[str, str] = OrderedDict()

    @property
    def running_jobs(self) -> int:
        return len(self._running)

    def _refusal(self, job: JobAssign) -> tuple[str, str] | None:
        if self.lingua:
            if job.job_id in self._seen_jobs:
                return PROCESSING_ERROR, DUPLICATE_JOB_ID
            if (job.session_id, job.utterance_index) in self._seen_slots:
                return PROCESSING_ERROR, DUPLICATE_UTTERANCE_INDEX
            return None
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
        """Admit ``job`` (ack it and queue it behind its session) or refuse it with a failed
        result."""
        refusal = self._refusal(job)
        if refusal is not None:
            code, message = refusal
            self.rejected += 1
            self._log.warning(
                "job refused", extra={"job_id": job.job_id, "code": code, "reason": message}
            )
            if self.lingua:  # lingua's shape: PROCESSING_ERROR, its message, no details
                failed = self._result(job, node_id, JobOutcome.failure(code, message), 0.0)
                await self._send(self._wire(failed))
                return False
            # "refused" tells the gateway this attempt never ran here: for a replayed attempt
            # the ids are those of the original, which must not be mistaken for its failure.
            refused = JobOutcome.failure(code, message, {"refused": True})
            await self._send(self._result(job, node_id, refused, 0.0))
            return False
        if self.lingua:
            _remember(self._seen_jobs, job.job_id, None, LINGUA_MEMORY)
            _remember(self._seen_slots, (job.session_id, job.utterance_index), None, LINGUA_MEMORY)
        run = _Running(job=job, node_id=node_id, arrived=time.perf_counter())
        tail = self._tails.get(job.session_id)
        if tail is not None and tail.task is not None and not tail.task.done():
            run.prev = tail.task
        self._tails[job.session_id] = run
        self._running[job.job_id] = run
        self._utterances.add((job.session_id, job.utterance_index))
        self._idle.clear()
        if not self.lingua:
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
        started: float | None = None
        try:
            try:
                if run.prev is not None:
                    # The session's previous job first (its outcome is its own business).
                    await asyncio.wait([run.prev])
                started = time.perf_counter()
                partials = bool(job.enable_streaming_asr) if self.lingua else True
                ctx = JobContext(job, run.node_id, self._send, partials=partials)
                outcome = await self.handler.handle(job, ctx)
                if not isinstance(outcome, JobOutcome):
                    outcome = JobOutcome.failure(
                        PROCESSING_ERROR if self.lingua else ErrorCode.INTERNAL_ERROR,
                        f"handler returned {type(outcome).__name__}, not JobOutcome",
                    )
            except asyncio.CancelledError:
                if run.cancel_reason is None:
                    raise
                if run.cancel_reason == CANCELLED_BY_GATEWAY or self.lingua:
                    # No result (lingua's agent sends nothing for a job its shutdown cut
                    # short). The slot is free at once, but the task ends only after the
                    # session's earlier jobs: the next job of the session waits on it.
                    self._free(run)
                    await self._after_previous(run)
                    return
                outcome = JobOutcome.failure(ErrorCode.NODE_UNAVAILABLE, run.cancel_reason)
            except Exception as exc:
                self._log.exception("job handler failed", extra={"job_id": job.job_id})
                if self.lingua:  # lingua reports the error's message as is
                    outcome = JobOutcome.failure(PROCESSING_ERROR, str(exc))
                else:
                    outcome = JobOutcome.failure(
                        ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
                    )
            # lingua measures from the job_assign; we measure the handler's own time
            since = run.arrived if self.lingua or started is None else started
            elapsed_ms = (time.perf_counter() - since) * 1000.0
            if outcome.success:
                self.completed += 1
            else:
                self.failed += 1
            # Only when cut short while queued: still report after the earlier jobs.
            await self._after_previous(run)
            await self._report(self._result(job, run.node_id, outcome, elapsed_ms))
        finally:
            self._release(run)

    @staticmethod
    async def _after_previous(run: _Running) -> None:
        """Return once the session's previous job (and so every earlier one) has ended."""
        if run.prev is not None and not run.prev.done():
            await asyncio.wait([run.prev])

    async def _report(self, result: JobResult) -> None:
        """Send a result, or keep it for the next connection when there is none."""
        if self.lingua:
            await self._report_lingua(result)
            return
        # Behind results already kept, a result waits its turn (order within a session).
        if not self._unsent and await self._send(result):
            return
        self._unsent.append(result)
        if len(self._unsent) > MAX_UNSENT:
            lost = self._unsent.pop(0)
            self._log.error("unsent result dropped", extra={"job_id": lost.job_id})
        self._log.info("result kept for the next connection", extra={"job_id": result.job_id})

    async def _report_lingua(self, result: JobResult) -> None:
        """lingua's ResultSender: no connection, no result; a successful result whose text is
        the last one sent for the session is withheld; a sent text becomes the last one."""
        session = result.session_id or ""
        raw = (result.text_asr or "") if result.success else ""
        if raw:
            text = normalize_text(raw)
            if text and self._last_text.get(session) == text:
                self.withheld += 1
                self._log.info(
                    "result withheld: same text as the last one sent for the session",
                    extra={"job_id": result.job_id, "session_id": session},
                )
                return
        if not await self._send(self._wire(result)):
            self.dropped += 1
            self._log.warning("no connection: result dropped", extra={"job_id": result.job_id})
            return
        if raw:  # lingua records the trimmed text (even an empty one) after each send
            _remember(self._last_text, session, normalize_text(raw), LINGUA_SESSIONS)

    @staticmethod
    def _wire(result: JobResult) -> dict[str, Any]:
        """lingua's frame: ``processing_time_ms`` is whole milliseconds (``Date.now()``)."""
        data = result.to_wire()
        if "processing_time_ms" in data:
            data["processing_time_ms"] = round(data["processing_time_ms"])
        return data

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
        """The job's task ends: its slot (if still held) and its place in the session."""
        self._free(run)
        if self._tails.get(run.job.session_id) is run:
            del self._tails[run.job.session_id]

    def _free(self, run: _Running) -> None:
        """Give the job's slot back (once)."""
        if run.freed:
            return
        run.freed = True
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
        """Cancel every job in flight; each reports a ``NODE_UNAVAILABLE`` failure if it can
        (the lingua profile reports nothing: lingua's agent just goes away).

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
