"""Typed wrappers of the job-path scripts (``select_node``, ``job_*``, ``gap_expire``, ...).

Mixed into :class:`lingua_shared.scripts.Scripts`; same rules: ``<name>_args`` builds
(keys, args) in header order, ``parse_<name>`` turns a reply into a result, ``-1`` raises
:class:`ScriptRejected`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lingua_shared.errors import ScriptRejected

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from lingua_shared.keys import Keys

JOB_SCRIPT_NAMES = (
    "job_create",
    "select_node",
    "job_ack",
    "job_finish",
    "job_release",
    "gap_expire",
    "timers_claim",
    "service_cooldown",
    "utterance_fail",
)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _check(name: str, reply: list[Any]) -> int:
    code = int(reply[0])
    if code == -1:
        raise ScriptRejected(f"{name}: invalid {_s(reply[1])}", {"field": _s(reply[1])})
    return code


@dataclass(frozen=True)
class Delivery:
    """Outcomes now due for one session, in utterance order: (index, client message)."""

    code: int
    gateway_id: str = ""
    conn_id: str = ""
    items: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class Selection:
    code: int  # 1 reserved, -4 no node, -5 not waiting for a node, -6 no such job
    node_id: str = ""
    gateway_id: str = ""
    conn_id: str = ""
    shard_id: str = ""
    state: str = ""  # assigned (waits for job_ack) | acked (accepted at assignment)
    reason: str = ""
    waiting: bool = False


@dataclass(frozen=True)
class Release:
    """``job_release``: 1 released (``attempt`` = the next one), 2 released with no attempt
    left (``attempt`` = the last one), 0 nothing to do; the node that had the job and its
    connection, to send it ``job_cancel``."""

    code: int
    attempt: int = 0
    node_id: str = ""
    gateway_id: str = ""
    conn_id: str = ""
    state: str = ""


@dataclass(frozen=True)
class CodeResult:
    code: int
    value: str = ""


def _deliveries(code: int, reply: list[Any]) -> Delivery:
    if code != 1:
        return Delivery(code)
    flat = reply[3:]
    items = [(int(flat[i]), json.loads(flat[i + 1])) for i in range(0, len(flat), 2)]
    return Delivery(code, _s(reply[1]), _s(reply[2]), items)


class JobScriptsMixin:
    keys: Keys

    def script(self, name: str) -> AsyncScript:  # provided by Scripts
        raise NotImplementedError

    pipeline: Any = None  # a TickPipeline (see scripts.py) when the client is asynchronous

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> list[Any]:
        script = self.script(name)
        if self.pipeline is not None:
            return await self.pipeline.call(script, keys, args)  # type: ignore[no-any-return]
        return await script(keys=keys, args=args)  # type: ignore[no-any-return]

    # -- job_create -------------------------------------------------------------------------
    def job_create_args(
        self,
        *,
        request_key: str,
        job_id: str,
        now_ms: int,
        ttl_ms: int,
        fields: dict[str, Any],
        audio: str,
    ) -> tuple[list[str], list[Any]]:
        flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        return [self.keys.prefix], [request_key, job_id, now_ms, ttl_ms, json.dumps(flat), audio]

    async def job_create(self, **kw: Any) -> CodeResult:
        return self.parse_job_create(await self._run("job_create", *self.job_create_args(**kw)))

    def parse_job_create(self, reply: list[Any]) -> CodeResult:
        return CodeResult(_check("job_create", reply), _s(reply[1]))

    # -- select_node ------------------------------------------------------------------------
    def select_node_args(
        self,
        *,
        job_id: str,
        attempt: int,
        now_ms: int,
        lease_ms: int,
        pair_src: str,
        pair_tgt: str,
        services: list[str],
        policy: str,
        candidates: int,
        wait_until_ms: int,
        retry_ms: int,
        deadline_ms: int = 30_000,
        tenant: str = "",
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [
            job_id,
            attempt,
            now_ms,
            lease_ms,
            pair_src,
            pair_tgt,
            json.dumps(services),
            policy,
            candidates,
            wait_until_ms,
            retry_ms,
            deadline_ms,
            tenant,
        ]

    async def select_node(self, **kw: Any) -> Selection:
        return self.parse_select_node(await self._run("select_node", *self.select_node_args(**kw)))

    def parse_select_node(self, reply: list[Any]) -> Selection:
        code = _check("select_node", reply)
        if code == 1:
            return Selection(1, *(_s(v) for v in reply[1:6]))
        if code == -4:
            return Selection(-4, reason=_s(reply[1]), waiting=int(reply[2]) == 1)
        return Selection(code, reason=_s(reply[1]))

    # -- job_ack ----------------------------------------------------------------------------
    def job_ack_args(
        self, *, job_id: str, attempt: int, node_id: str, now_ms: int, deadline_ms: int
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [job_id, attempt, node_id, now_ms, deadline_ms]

    async def job_ack(self, **kw: Any) -> CodeResult:
        return self.parse_job_ack(await self._run("job_ack", *self.job_ack_args(**kw)))

    def parse_job_ack(self, reply: list[Any]) -> CodeResult:
        return CodeResult(_check("job_ack", reply), _s(reply[1]))

    # -- job_finish -------------------------------------------------------------------------
    def job_finish_args(
        self,
        *,
        job_id: str,
        attempt: int,
        node_id: str,
        now_ms: int,
        outcome: str,
        payload: dict[str, Any],
        gap_ms: int,
        session_ttl_ms: int,
        earlier: list[tuple[str, int]] | None = None,
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [
            job_id,
            attempt,
            node_id,
            now_ms,
            outcome,
            json.dumps(payload),
            gap_ms,
            session_ttl_ms,
            json.dumps([list(e) for e in earlier or []]),
        ]

    async def job_finish(self, **kw: Any) -> Delivery:
        return self.parse_job_finish(await self._run("job_finish", *self.job_finish_args(**kw)))

    def parse_job_finish(self, reply: list[Any]) -> Delivery:
        code = _check("job_finish", reply)
        if code == -5:
            return Delivery(code, gateway_id=_s(reply[1]))  # gateway_id carries the reason
        return _deliveries(code, reply)

    # -- job_release ------------------------------------------------------------------------
    def job_release_args(
        self, *, job_id: str, attempt: int, reason: str, now_ms: int, max_attempts: int
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [job_id, attempt, reason, now_ms, max_attempts]

    async def job_release(self, **kw: Any) -> Release:
        return self.parse_job_release(await self._run("job_release", *self.job_release_args(**kw)))

    def parse_job_release(self, reply: list[Any]) -> Release:
        code = _check("job_release", reply)
        if code in (1, 2):
            return Release(code, int(reply[1]), *(_s(v) for v in reply[2:5]))
        return Release(code, state=_s(reply[1]))

    # -- gap_expire -------------------------------------------------------------------------
    def gap_expire_args(
        self, *, session_id: str, now_ms: int, gap_ms: int, session_ttl_ms: int
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [session_id, now_ms, gap_ms, session_ttl_ms]

    async def gap_expire(self, **kw: Any) -> Delivery:
        return self.parse_gap_expire(await self._run("gap_expire", *self.gap_expire_args(**kw)))

    def parse_gap_expire(self, reply: list[Any]) -> Delivery:
        return _deliveries(_check("gap_expire", reply), reply)

    # -- timers_claim -----------------------------------------------------------------------
    def timers_claim_args(
        self, *, now_ms: int, claim_ms: int, limit: int
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.timers], [now_ms, claim_ms, limit]

    async def timers_claim(self, **kw: Any) -> list[str]:
        return self.parse_timers_claim(
            await self._run("timers_claim", *self.timers_claim_args(**kw))
        )

    def parse_timers_claim(self, reply: list[Any]) -> list[str]:
        if reply and not isinstance(reply[0], bytes | str) and int(reply[0]) == -1:
            _check("timers_claim", reply)
        return [_s(v) for v in reply]

    # -- service_cooldown -------------------------------------------------------------------
    def service_cooldown_args(
        self, *, node_id: str, service: str, until_ms: int
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.node(node_id)], [node_id, service, until_ms]

    async def service_cooldown(self, **kw: Any) -> CodeResult:
        return self.parse_service_cooldown(
            await self._run("service_cooldown", *self.service_cooldown_args(**kw))
        )

    def parse_service_cooldown(self, reply: list[Any]) -> CodeResult:
        return CodeResult(_check("service_cooldown", reply), _s(reply[1]))

    # -- utterance_fail ---------------------------------------------------------------------
    def utterance_fail_args(
        self,
        *,
        session_id: str,
        utterance_index: int,
        now_ms: int,
        payload: dict[str, Any],
        gap_ms: int,
        session_ttl_ms: int,
    ) -> tuple[list[str], list[Any]]:
        return [self.keys.prefix], [
            session_id,
            utterance_index,
            now_ms,
            json.dumps(payload),
            gap_ms,
            session_ttl_ms,
        ]

    async def utterance_fail(self, **kw: Any) -> Delivery:
        return self.parse_utterance_fail(
            await self._run("utterance_fail", *self.utterance_fail_args(**kw))
        )

    def parse_utterance_fail(self, reply: list[Any]) -> Delivery:
        return _deliveries(_check("utterance_fail", reply), reply)
