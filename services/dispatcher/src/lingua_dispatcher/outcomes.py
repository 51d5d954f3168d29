"""How an utterance's end reaches its client: a failure told as lingua's scheduler tells it
(``missing_result`` + ``ui_event``, with what really happened), and the outcomes a script
released, sent to the session's gateway (J6)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from lingua_dispatcher.metrics import Metrics
from lingua_dispatcher.stats_recorder import StatsRecorder
from lingua_shared.bus import Unroutable
from lingua_shared.errors import DependencyDown
from lingua_shared.events import ToSession
from lingua_shared.logs import get_logger
from lingua_shared.protocol import ErrorCode
from lingua_shared.protocol.session import MissingResult, UiEvent
from lingua_shared.runtime import Infra, now_ms
from lingua_shared.scripts import Delivery, Pending, ScriptCode
from lingua_shared.settings import Settings

log = get_logger(__name__)
# Fault tests only: ``after_job_finish`` SIGKILLs this process between a job_finish that
# released outcomes and their publish (tests/faults). Unset in every deployment.
CRASH_AT = os.environ.get("LINGUA_TEST_CRASH_AT", "")


def no_node_outcome(
    settings: Settings, job: dict[str, Any], attempt: int, reason: str, cause: str | None
) -> tuple[ErrorCode, str]:
    """What the client is told when no node takes the job: what really happened.

    A first attempt found no node (none serves the pair, or all were busy for the whole
    wait); a later one is a failover after its node failed, told as that failure."""
    pair = f"{job['pair_src']}->{job['pair_tgt']}"
    index = job["utterance_index"]
    if attempt <= 1 or not cause:
        if reason == "no_covering_pool":
            return ErrorCode.NO_AVAILABLE_NODE, f"no node serves {pair}"
        wait_s = settings.no_node_wait_ms / 1000
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
        limit_ms = settings.job_deadline_ms if cause == "deadline" else settings.ack_timeout_ms
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


class Outcomes:
    def __init__(self, infra: Infra, metrics: Metrics, stats: StatsRecorder) -> None:
        self.infra = infra
        self.s = infra.scripts
        self.settings = infra.settings
        self.metrics = metrics
        self.stats = stats

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
        if delivery.code == ScriptCode.ALREADY_FINISHED:
            # it ended meanwhile (a late answer of the attempt taken back, a replay): not a
            # failure; what that end released and no gateway acknowledged goes out again
            log.info("job.fail_skipped", job_id=job_id, code=code.value, why="already_finished")
            await self.deliver(job["session_id"], delivery)
            return
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
        if delivery.code == ScriptCode.FINISHED and delivery.gateway_id:
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
        """Publish the results a script released, in order; they go out together (one
        coalesced message to the session's gateway). Each stays in the session's outbox until
        that gateway has written it to the client (``outbox_ack``): a publish that fails, or is
        lost with this process or the gateway, is published again by :meth:`republish` (a
        replayed ``job_finish`` hands back the same outcomes, published here again)."""
        if not delivery.items:
            return
        replay = delivery.code == ScriptCode.ALREADY_FINISHED
        if replay:
            self.metrics.outbox_republished.inc(len(delivery.items))
        else:
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
            return  # no connection holds the session: its outbox waits for a resume
        if CRASH_AT == "after_job_finish" and delivery.code == ScriptCode.FINISHED:
            os.kill(os.getpid(), signal.SIGKILL)  # fault tests: die between script and publish
        await self.publish(session_id, delivery.gateway_id, delivery.conn_id, delivery.items)

    async def republish(self, pending: list[Pending]) -> None:
        """Publish again what sessions' outboxes held unacknowledged (``outbox_claim``)."""
        for p in pending:
            if not p.items:
                continue
            self.metrics.outbox_republished.inc(len(p.items))
            log.info(
                "session.outbox_republished",
                session_id=p.session_id,
                gateway_id=p.gateway_id,
                utterance_indices=[i for i, _ in p.items][:32],
            )
            await self.publish(p.session_id, p.gateway_id, p.conn_id, p.items)

    async def publish(
        self,
        session_id: str,
        gateway_id: str,
        conn_id: str,
        items: list[tuple[int, dict[str, Any]]],
    ) -> None:
        sent = await asyncio.gather(
            *(
                self.infra.publisher.to_gateway(
                    gateway_id,
                    ToSession(
                        session_id=session_id,
                        conn_id=conn_id,
                        utterance_index=index,
                        ordered=True,
                        payload=payload,
                    ),
                    batch=True,
                )
                for index, payload in items
            ),
            return_exceptions=True,
        )
        for (index, _), outcome in zip(items, sent, strict=True):
            if isinstance(outcome, (Unroutable, DependencyDown)):
                # still in the outbox: published again after LINGUA_OUTBOX_RETRY_MS, or
                # replayed to the client when it resumes the session on another gateway
                self.metrics.delivery_dropped.inc()
                log.warning(
                    "job.delivery_deferred",
                    session_id=session_id,
                    utterance_index=index,
                    gateway_id=gateway_id,
                    error=repr(outcome),
                )
            elif isinstance(outcome, BaseException):
                raise outcome
