"""The order of jobs on a node's socket: what an answer says about the jobs sent before it.

A node answers a session's jobs in the order they reached it. Two dispatcher replicas may
reserve a session's utterances 1 and 2 in one order and have their job_assigns reach the
gateway in the other, so only the gateway knows the order the node saw: an answer lists the
same session's unanswered jobs sent before it, and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from lingua_gateway.metrics import Metrics
from lingua_gateway.node_endpoint import NodeConnection
from lingua_gateway.ports import Connections, NodeDeps
from lingua_shared.protocol import JobResult
from lingua_shared.protocol.node import result_is_refusal
from lingua_shared.settings import Settings


class FakeWs:
    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.protocol = SimpleNamespace(close_rcvd=None, close_sent=None)

    async def send(self, data: str | bytes) -> None:
        self.sent.append(data)


@pytest.fixture
async def c() -> AsyncIterator[NodeConnection]:
    unused = SimpleNamespace()  # these tests publish nothing, beat nothing, register nothing
    deps = NodeDeps(
        settings=Settings(instance_id="gw-t"),
        metrics=Metrics(),
        publisher=unused,  # type: ignore[arg-type]
        beats=unused,  # type: ignore[arg-type]
        register=unused,  # type: ignore[arg-type]
        connections=Connections(),
    )
    conn = NodeConnection(FakeWs(), None, deps)  # type: ignore[arg-type]
    yield conn
    await conn.out.flush_and_stop(1.0)
    assert len(conn.ws.sent) == conn.frames_sent  # type: ignore[attr-defined]


def assign(job_id: str, session: str, attempt: int = 1) -> dict[str, object]:
    return {"type": "job_assign", "job_id": job_id, "attempt_id": attempt, "session_id": session}


async def test_an_answer_names_the_same_sessions_jobs_sent_before_it(c: NodeConnection) -> None:
    c.frames_sent = 4  # type: ignore[attr-defined]
    # reserved as 0, 1, 2 but sent as 0, 2, 1 (two dispatchers); another session in between
    for job_id, session in (("j0", "s1"), ("j2", "s1"), ("x0", "s2"), ("j1", "s1")):
        c.send_to_node(assign(job_id, session))
    assert c.answered("j2") == [("j0", 1)]  # j1 reached the node after j2: not finished
    assert c.answered("j1") == []  # j0 was ended with j2's answer
    assert c.answered("x0") == []
    assert c.sent_jobs == []
    assert c.answered("never-sent") == []


async def test_a_cancelled_job_is_forgotten(c: NodeConnection) -> None:
    c.frames_sent = 3  # type: ignore[attr-defined]
    c.send_to_node(assign("j0", "s1"))
    c.send_to_node({"type": "job_cancel", "job_id": "j0", "reason": "job_timeout"})
    c.send_to_node(assign("j1", "s1", attempt=2))
    assert c.answered("j1") == []


def test_a_refusal_is_not_an_answer_in_turn() -> None:
    ours = JobResult.model_validate(
        {"job_id": "j", "success": False,
         "error": {"code": "INVALID_MESSAGE", "message": "dup", "details": {"refused": True}}}
    )  # fmt: skip
    lingua = JobResult.model_validate(
        {"job_id": "j", "success": False,
         "error": {"code": "PROCESSING_ERROR", "message": "DUPLICATE_JOB_ID: already processed"}}
    )  # fmt: skip
    failure = JobResult.model_validate(
        {"job_id": "j", "success": False,
         "error": {"code": "PROCESSING_ERROR", "message": "asr crashed"}}
    )  # fmt: skip
    assert result_is_refusal(ours) and result_is_refusal(lingua)
    assert not result_is_refusal(failure)
    assert not result_is_refusal(JobResult(job_id="j"))
