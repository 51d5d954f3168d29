"""The job state machine's driver: create (J2), select and reserve (J4), dispatch (J5), and
dispatch again after a take-back; :mod:`takeback` takes jobs back, :mod:`outcomes` tells the
client how they ended, :mod:`job_record` reads them.

Everything a decision reads is in Redis and changes only through the job scripts, so any
replica can pick up any job at any step; this class holds no job state of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from lingua_dispatcher.job_record import (
    JOB_OPTIONS,
    needed_services,
    options_of,
    pipeline_of,
    read_job,
)
from lingua_dispatcher.metrics import Metrics
from lingua_dispatcher.outcomes import Outcomes, no_node_outcome
from lingua_dispatcher.stats_recorder import StatsRecorder
from lingua_dispatcher.takeback import EXHAUSTED_CODE, TakeBack
from lingua_shared.bus import Unroutable
from lingua_shared.errors import DependencyDown
from lingua_shared.events import JobRequest, ToNode
from lingua_shared.keys import selection_pair
from lingua_shared.logs import get_logger
from lingua_shared.protocol import ErrorCode, JobAssign, Pipeline
from lingua_shared.runtime import Infra, now_ms
from lingua_shared.scripts import ScriptCode, Selection

log = get_logger(__name__)
CANDIDATES_PER_SHARD = 8
RETRY_WAIT_MS = 100
# a failed job_assign publish is tried again after these waits (5.75 s: more than a
# gateway's reconnect interval), while its reservation holds
ASSIGN_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 2.0)


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
        self.outcomes = Outcomes(infra, metrics, self.stats)
        self.takeback = TakeBack(infra, metrics, self.outcomes)

    async def read_job(self, job_id: str) -> dict[str, str] | None:
        return await read_job(self.infra, job_id)

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
        if created.code == ScriptCode.DUPLICATE:
            self.metrics.duplicates.inc()
            existing = created.job_id
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
        if job is None or job.get("state") in ("done", "failed"):
            return  # gone, or ended meanwhile (a late answer of the attempt taken back)
        cause = cause or job.get("release_reason")
        pipeline = pipeline_of(job)
        while True:
            if attempt > 1 and first is None and await self.fail_if_no_window(job_id, job, cause):
                return
            sel, first = first or await self.select(job_id, attempt, job), None
            now = now_ms()
            if sel.code == ScriptCode.NO_NODE:
                if sel.waiting:
                    log.info("job.waiting_for_slot", job_id=job_id, attempt=attempt)
                    return
                self.metrics.no_node.labels(sel.reason).inc()
                code, why = no_node_outcome(self.settings, job, attempt, sel.reason, cause)
                await self.outcomes.fail(job_id, job, code, why)
                return
            if sel.code != ScriptCode.RESERVED:
                log.info("job.not_dispatchable", job_id=job_id, attempt=attempt, reason=sel.reason)
                return
            if audio is None:
                raw = await self.infra.redis.get(self.infra.keys.job_audio(job_id))
                audio = raw.decode() if raw else ""
            options = options_of(job)
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
            if not await self.send_assign(job_id, attempt, sel, assign):
                nxt = await self.takeback.take_back(job_id, attempt, "unroutable", job)
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

    async def send_assign(
        self, job_id: str, attempt: int, sel: Selection, assign: JobAssign
    ) -> bool:
        """Publish ``assign`` to the node's gateway. A publish that fails (the broker down or not
        confirming, or the gateway's queue not there: a broker restart, a gateway reconnecting)
        is tried again while the reservation holds, after ``ASSIGN_RETRY_DELAYS_S``: a broker
        restart must not burn a job's attempts in milliseconds. False: it never left (or the
        attempt was taken back meanwhile by its lease or a lost node), the caller takes it back."""
        msg = ToNode(node_id=sel.node_id, conn_id=sel.conn_id, payload=assign.to_wire())
        for delay in (0.0, *ASSIGN_RETRY_DELAYS_S):
            if delay:
                await asyncio.sleep(delay)
                if not await self.still_reserved(job_id, attempt, sel.node_id):
                    return False
            try:
                await self.infra.publisher.to_gateway(sel.gateway_id, msg, batch=True)
                return True
            except (Unroutable, DependencyDown) as exc:
                self.metrics.assign_publish_failed.inc()
                log.warning(
                    "job.assign_unroutable",
                    job_id=job_id,
                    attempt=attempt,
                    node_id=sel.node_id,
                    gateway_id=sel.gateway_id,
                    error=repr(exc),
                )
        return False

    async def still_reserved(self, job_id: str, attempt: int, node_id: str) -> bool:
        """The attempt still holds its node (no lease or lost node took it back meanwhile)."""
        try:
            state, att, node = await self.infra.redis.hmget(
                self.infra.keys.job(job_id), "state", "attempt", "node_id"
            )
        except Exception:  # Redis away too: keep the reservation, its timer still runs
            return True
        state, node = (v.decode() if isinstance(v, bytes) else v for v in (state, node))
        return state in ("assigned", "acked") and int(att or 0) == attempt and node == node_id

    async def fail_if_no_window(self, job_id: str, job: dict[str, Any], cause: str | None) -> bool:
        """Before a failover: when the session's gap window cannot hold another attempt, the
        utterance fails now with what happened (see ``TakeBack.window_too_short``)."""
        left = await self.takeback.window_too_short(job, now_ms())
        if left is None:
            return False
        _, why = no_node_outcome(self.settings, job, 2, "no_free_slot", cause)
        code = EXHAUSTED_CODE.get(cause or "", ErrorCode.NODE_UNAVAILABLE)
        head = why.split(", and ", 1)[0]
        self.metrics.no_node.labels("gap_window").inc()
        await self.outcomes.fail(
            job_id,
            job,
            code,
            f"{head}, and its place in the session's order times out in {left / 1000:g} s, "
            "too soon for another attempt",
        )
        return True

    async def redispatch(self, job_id: str, attempt: int, reason: str) -> None:
        """Take ``attempt`` back and dispatch the next one (or fail the job: see TakeBack)."""
        nxt = await self.takeback.take_back(job_id, attempt, reason)
        if nxt is not None:
            await self.dispatch(job_id, nxt, cause=reason)
