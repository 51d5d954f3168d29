"""The job state machine's driver: create (J2), select and reserve (J4), dispatch (J5),
take back and redispatch, finish with a typed error, deliver in order (J6).

Everything a decision reads is in Redis and changes only through the job scripts, so any
replica can pick up any job at any step; this class holds no job state of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

from lingua_dispatcher.metrics import Metrics
from lingua_dispatcher.stats_recorder import StatsRecorder
from lingua_shared.bus import Unroutable
from lingua_shared.errors import DependencyDown
from lingua_shared.events import JobRequest, ToNode, ToSession
from lingua_shared.job_scripts import Delivery, Release, Selection
from lingua_shared.logs import get_logger
from lingua_shared.protocol import ErrorCode, JobAssign, JobCancel, Pipeline
from lingua_shared.protocol.session import MissingResult, UiEvent
from lingua_shared.runtime import Infra, now_ms

log = get_logger(__name__)
CANDIDATES_PER_SHARD = 8
RETRY_WAIT_MS = 100
JOB_FIELDS = (
    "session_id",
    "utterance_index",
    "mode",
    "src_lang",
    "tgt_lang",
    "lang_a",
    "lang_b",
    "pair_src",
    "pair_tgt",
    "audio_format",
    "sample_rate",
    "pipeline",
    "trace_id",
    "state",
    "attempt",
    "wait_until",
    "received_at_ms",
    "gateway_id",
    "conn_id",
    "node_id",
    "tenant",
    "options",
    "release_reason",
)
# take-back reasons whose exhaustion is reported to the client as this code
EXHAUSTED_CODE = {"ack_timeout": ErrorCode.JOB_TIMEOUT, "deadline": ErrorCode.JOB_TIMEOUT}
# take-backs the node is told about (job_cancel, with lingua's reason): it may still be
# working on the job, which now runs elsewhere
CANCEL_REASONS = {"deadline": "job_timeout", "ack_timeout": "ack_timeout"}
# the session options forwarded to the node in job_assign
JOB_OPTIONS = (
    "auto_langs",
    "dialect",
    "features",
    "enable_streaming_asr",
    "partial_update_interval_ms",
)


def selection_pair(
    mode: str, src: str, tgt: str, lang_a: str | None, lang_b: str | None
) -> tuple[str, str]:
    """Two-way sessions select on {lang_a, lang_b} (the set must cover both directions)."""
    if mode == "two_way_auto" and lang_a and lang_b:
        return lang_a, lang_b
    return src, tgt


def needed_services(pipeline: dict[str, Any]) -> list[str]:
    services = ["asr", "semantic"]
    if pipeline.get("use_tts"):
        services.append("tts")
    return services


class Jobs:
    def __init__(
        self, infra: Infra, metrics: Metrics, recorder: StatsRecorder | None = None
    ) -> None:
        self.infra = infra
        self.s = infra.scripts
        self.settings = infra.settings
        self.metrics = metrics
        # display counters for the stats snapshot; the app starts and stops its flush loop
        self.stats = recorder or StatsRecorder(
            infra.redis, infra.keys, infra.settings.stats_flush_s
        )

    async def read_job(self, job_id: str) -> dict[str, str] | None:
        values = await self.infra.redis.hmget(self.infra.keys.job(job_id), JOB_FIELDS)
        if values[JOB_FIELDS.index("state")] is None:
            return None
        return {k: v.decode() for k, v in zip(JOB_FIELDS, values, strict=True) if v is not None}

    # -- request -> job ---------------------------------------------------------------------
    async def on_request(self, req: JobRequest) -> None:
        pair = selection_pair(req.mode, req.src_lang, req.tgt_lang, req.lang_a, req.lang_b)
        job_id = f"j-{uuid.uuid4().hex[:16]}"
        fields = {
            "session_id": req.session_id,
            "utterance_index": str(req.utterance_index),
            "mode": req.mode,
            "src_lang": req.src_lang,
            "tgt_lang": req.tgt_lang,
            "lang_a": req.lang_a or "",
            "lang_b": req.lang_b or "",
            "pair_src": pair[0],
            "pair_tgt": pair[1],
            "audio_format": req.audio_format,
            "sample_rate": str(req.sample_rate),
            "pipeline": req.pipeline,
            "trace_id": req.trace_id,
            "gateway_id": req.gateway_id,
            "conn_id": req.conn_id,
            "received_at_ms": str(req.received_at_ms),
            "tenant": req.tenant_id or "",
            "options": req.options,
        }
        # job_create and the first selection leave in one round trip (the scripts run in this
        # order): select_node on a job that was not created (a duplicate request) is a no-op
        # that answers "no such job", so nothing is reserved for it
        created, first = await asyncio.gather(
            self.s.job_create(
                request_key=req.request_key,
                job_id=job_id,
                now_ms=now_ms(),
                ttl_ms=self.settings.job_ttl_s * 1000,
                fields=fields,
                audio=req.audio,
            ),
            self.select(job_id, 1, fields),
        )
        if created.code == 2:
            self.metrics.duplicates.inc()
            existing = created.value
            log.info(
                "job.duplicate_request",
                request_key=req.request_key,
                job_id=existing,
                session_id=req.session_id,
                utterance_index=req.utterance_index,
            )
            job = await self.read_job(existing)
            if job is not None and job["state"] == "queued" and job.get("attempt") == "0":
                # the replica that created it died before dispatching: take over
                await self.dispatch(existing, 1, audio=req.audio)
            return
        log.info(
            "job.created",
            job_id=job_id,
            session_id=req.session_id,
            utterance_index=req.utterance_index,
            trace_id=req.trace_id,
        )
        await self.dispatch(job_id, 1, audio=req.audio, job=fields, first=first)

    # -- select + send ----------------------------------------------------------------------
    async def select(self, job_id: str, attempt: int, job: dict[str, Any]) -> Selection:
        now = now_ms()
        return await self.s.select_node(
            job_id=job_id,
            attempt=attempt,
            now_ms=now,
            lease_ms=self.settings.ack_timeout_ms,
            pair_src=job["pair_src"],
            pair_tgt=job["pair_tgt"],
            services=needed_services(pipeline_of(job)),
            policy=self.settings.select_policy,
            candidates=CANDIDATES_PER_SHARD,
            wait_until_ms=int(job.get("wait_until") or 0) or now + self.settings.no_node_wait_ms,
            retry_ms=RETRY_WAIT_MS,
            deadline_ms=self.settings.job_deadline_ms,
            tenant=job.get("tenant") or "",
        )

    async def dispatch(
        self,
        job_id: str,
        attempt: int,
        *,
        audio: str | None = None,
        job: dict[str, Any] | None = None,
        first: Selection | None = None,
        cause: str | None = None,
    ) -> None:
        """Reserve a node for ``attempt`` and send it the job; on failure take it back and try
        the next attempt, at most ``max_attempts`` in all, then a typed error. ``first`` is a
        selection for ``attempt`` already made; ``cause`` why the previous attempt was taken
        back (read from the job record when not given)."""
        job = job or await self.read_job(job_id)
        if job is None:
            return
        cause = cause or job.get("release_reason")
        pipeline = pipeline_of(job)
        while True:
            sel, first = first or await self.select(job_id, attempt, job), None
            now = now_ms()
            if sel.code == -4:
                if sel.waiting:
                    log.info("job.waiting_for_slot", job_id=job_id, attempt=attempt)
                    return
                self.metrics.no_node.labels(sel.reason).inc()
                code, why = self.no_node_outcome(job, attempt, sel.reason, cause)
                await self.fail(job_id, job, code, why)
                return
            if sel.code != 1:
                log.info("job.not_dispatchable", job_id=job_id, attempt=attempt, reason=sel.reason)
                return
            if audio is None:
                raw = await self.infra.redis.get(self.infra.keys.job_audio(job_id))
                audio = raw.decode() if raw else ""
            options = (
                _json(job["options"])
                if isinstance(job.get("options"), str)
                else (job.get("options") or {})
            )
            assign = JobAssign(
                **{k: options[k] for k in JOB_OPTIONS if options.get(k) is not None},
                job_id=job_id,
                attempt_id=attempt,
                session_id=job["session_id"],
                utterance_index=int(job["utterance_index"]),
                src_lang=job["src_lang"],
                tgt_lang=job["tgt_lang"],
                pipeline=Pipeline(**pipeline),
                audio=audio,
                audio_format=job["audio_format"],
                sample_rate=int(job["sample_rate"]),
                trace_id=job["trace_id"],
                mode=job.get("mode") or None,
                lang_a=job.get("lang_a") or None,
                lang_b=job.get("lang_b") or None,
            )
            try:
                await self.infra.publisher.to_gateway(
                    sel.gateway_id,
                    ToNode(node_id=sel.node_id, conn_id=sel.conn_id, payload=assign.to_wire()),
                    batch=True,
                )
            except (Unroutable, DependencyDown) as exc:
                log.warning(
                    "job.assign_unroutable",
                    job_id=job_id,
                    attempt=attempt,
                    node_id=sel.node_id,
                    gateway_id=sel.gateway_id,
                    error=repr(exc),
                )
                nxt = await self.take_back(job_id, attempt, "unroutable", job)
                if nxt is None:
                    return
                attempt, cause = nxt, "unroutable"
                continue
            received = int(job.get("received_at_ms") or now)
            dispatch_ms = max(0, now_ms() - received)
            self.metrics.dispatch_latency.observe(dispatch_ms / 1000)
            self.stats.dispatched(dispatch_ms)
            log.info(
                "job.dispatched",
                job_id=job_id,
                attempt=attempt,
                node_id=sel.node_id,
                shard=sel.shard_id,
                state=sel.state,
                session_id=job["session_id"],
                trace_id=job["trace_id"],
            )
            return

    def no_node_outcome(
        self, job: dict[str, Any], attempt: int, reason: str, cause: str | None
    ) -> tuple[ErrorCode, str]:
        """What the client is told when no node takes the job: what really happened.

        A first attempt found no node (none serves the pair, or all were busy for the whole
        wait); a later one is a failover after its node failed, told as that failure."""
        pair = f"{job['pair_src']}->{job['pair_tgt']}"
        index = job["utterance_index"]
        if attempt <= 1 or not cause:
            if reason == "no_covering_pool":
                return ErrorCode.NO_AVAILABLE_NODE, f"no node serves {pair}"
            wait_s = self.settings.no_node_wait_ms / 1000
            return (
                ErrorCode.NO_AVAILABLE_NODE,
                f"every node serving {pair} was busy for {wait_s:g} s",
            )
        node = job.get("node_id") or "its node"
        elsewhere = (
            f"and no other node serving {pair} could take it"
            if reason == "no_free_slot"
            else f"and no node serves {pair} any more"
        )
        if cause == "node_lost":
            return (
                ErrorCode.NODE_UNAVAILABLE,
                f"node {node} disconnected while handling utterance {index}, {elsewhere}",
            )
        if cause in ("deadline", "ack_timeout"):
            limit_ms = (
                self.settings.job_deadline_ms
                if cause == "deadline"
                else self.settings.ack_timeout_ms
            )
            what = "answer" if cause == "deadline" else "accept"
            return (
                ErrorCode.JOB_TIMEOUT,
                f"node {node} did not {what} utterance {index} within {limit_ms / 1000:g} s, "
                f"{elsewhere}",
            )
        return (
            ErrorCode.NODE_UNAVAILABLE,
            f"node {node} could not take utterance {index} ({cause}), {elsewhere}",
        )

    async def take_back(
        self, job_id: str, attempt: int, reason: str, job: dict[str, Any] | None = None
    ) -> int | None:
        """Release ``attempt``; the next attempt number, or None when nothing more to do.

        A node that may still be working on the job (its deadline or ack lease passed) is
        told with ``job_cancel``: the job now runs elsewhere."""
        rel = await self.s.job_release(
            job_id=job_id,
            attempt=attempt,
            reason=reason,
            now_ms=now_ms(),
            max_attempts=self.settings.max_attempts,
        )
        if rel.code == 0:
            return None  # another replica moved this job on already
        self.metrics.redispatch.labels(reason).inc()
        job = job or await self.read_job(job_id)
        if reason in CANCEL_REASONS and rel.gateway_id:
            await self.cancel_on_node(job_id, rel, CANCEL_REASONS[reason], job)
        if rel.code == 1:
            log.info("job.taken_back", job_id=job_id, attempt=attempt, reason=reason)
            return rel.attempt
        if job is not None:
            code = EXHAUSTED_CODE.get(reason, ErrorCode.NODE_UNAVAILABLE)
            await self.fail(
                job_id,
                job,
                code,
                f"no node completed utterance {job['utterance_index']} in {attempt} attempts "
                f"(the last one: {reason} on node {rel.node_id})",
            )
        return None

    async def cancel_on_node(
        self, job_id: str, rel: Release, reason: str, job: dict[str, Any] | None
    ) -> None:
        """Best effort: the node's connection may be gone (its timers already decided)."""
        cancel = JobCancel(
            job_id=job_id, trace_id=(job or {}).get("trace_id"), reason=reason
        ).to_wire()
        try:
            await self.infra.publisher.to_gateway(
                rel.gateway_id,
                ToNode(node_id=rel.node_id, conn_id=rel.conn_id, payload=cancel),
                batch=True,
            )
            self.metrics.cancels.labels(reason).inc()
        except (Unroutable, DependencyDown) as exc:
            log.info("job.cancel_unroutable", job_id=job_id, node_id=rel.node_id, error=repr(exc))

    async def redispatch(self, job_id: str, attempt: int, reason: str) -> None:
        nxt = await self.take_back(job_id, attempt, reason)
        if nxt is not None:
            await self.dispatch(job_id, nxt, cause=reason)

    # -- outcomes ---------------------------------------------------------------------------
    async def fail(
        self,
        job_id: str,
        job: dict[str, Any],
        code: ErrorCode,
        message: str,
        *,
        attempt: int = 0,
        node_id: str = "",
        earlier: list[tuple[str, int]] | None = None,
    ) -> None:
        """End a job that failed: its client gets ``missing_result`` (reason ``error``) in
        the utterance's place and a ``ui_event`` ERROR with the code and what happened, as
        lingua's scheduler reports a failed utterance. Never an ``error`` message: lingua's web
        client shows every ``error`` as a modal alert, which is for the session as a whole."""
        index = int(job["utterance_index"])
        now = now_ms()
        payload = MissingResult(
            session_id=job["session_id"],
            utterance_index=index,
            reason="error",
            created_at_ms=now,
            trace_id=job.get("trace_id"),
            job_id=job_id,
            error_code=str(code),
        ).to_wire()
        received = int(job.get("received_at_ms") or 0)
        event = UiEvent(
            trace_id=job.get("trace_id") or "",
            session_id=job["session_id"],
            job_id=job_id,
            utterance_index=index,
            error_code=str(code),
            hint=message,
            elapsed_ms=max(0, now - received) if received else None,
        ).to_wire()
        self.metrics.errors.labels(code.value).inc()
        self.metrics.jobs.labels("failed").inc()
        self.stats.failed(
            code.value,
            message,
            src=job.get("src_lang", ""),
            tgt=job.get("tgt_lang", ""),
            session_id=job["session_id"],
            job_id=job_id,
        )
        log.info(
            "job.failed",
            job_id=job_id,
            code=code.value,
            error=message,
            session_id=job["session_id"],
            trace_id=job.get("trace_id"),
        )
        delivery = await self.s.job_finish(
            job_id=job_id,
            attempt=attempt,
            node_id=node_id,
            now_ms=now,
            outcome="failed",
            payload=payload,
            gap_ms=self.settings.gap_timeout_ms,
            session_ttl_ms=int(self.settings.session_ttl_s * 1000),
            earlier=earlier,
        )
        if delivery.code == 1 and delivery.gateway_id:
            # the event goes at once (it is not an answer: it takes no place in the order)
            with contextlib.suppress(Unroutable, DependencyDown):
                await self.infra.publisher.to_gateway(
                    delivery.gateway_id,
                    ToSession(
                        session_id=job["session_id"],
                        conn_id=delivery.conn_id,
                        utterance_index=index,
                        ordered=False,
                        payload=event,
                    ),
                    batch=True,
                )
        await self.deliver(job["session_id"], delivery)

    async def deliver(self, session_id: str, delivery: Delivery) -> None:
        """Send the results ``job_finish`` released, in order; they go out together (one
        coalesced message to the session's gateway), so a failure drops them together."""
        if delivery.code != 1 or not delivery.items:
            return
        for _, payload in delivery.items:
            if payload.get("reason") == "no_result" and payload.get("type") == "missing_result":
                self.metrics.no_result.inc()
                log.info(
                    "job.finished_without_result",
                    job_id=payload.get("job_id"),
                    session_id=session_id,
                    utterance_index=payload.get("utterance_index"),
                )
        if not delivery.gateway_id:
            return
        sent = await asyncio.gather(
            *(
                self.infra.publisher.to_gateway(
                    delivery.gateway_id,
                    ToSession(
                        session_id=session_id,
                        conn_id=delivery.conn_id,
                        utterance_index=index,
                        ordered=True,
                        payload=payload,
                    ),
                    batch=True,
                )
                for index, payload in delivery.items
            ),
            return_exceptions=True,
        )
        for (index, _), outcome in zip(delivery.items, sent, strict=True):
            if isinstance(outcome, (Unroutable, DependencyDown)):
                self.metrics.delivery_dropped.inc()
                log.warning(
                    "job.delivery_dropped",
                    session_id=session_id,
                    utterance_index=index,
                    gateway_id=delivery.gateway_id,
                    error=repr(outcome),
                )
            elif isinstance(outcome, BaseException):
                raise outcome


def pipeline_of(job: dict[str, Any]) -> dict[str, Any]:
    """A job's pipeline: the dict of a request, or the JSON of a job record."""
    raw = job["pipeline"]
    return raw if isinstance(raw, dict) else _json(raw)


def _json(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
