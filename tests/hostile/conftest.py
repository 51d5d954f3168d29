"""Fixtures of the hostile-input suite: the integration stack (real processes, real Redis and
RabbitMQ) with limits low enough that fuzzed frames cross them.

``stack_env`` and the report hook come from ``tests.support.fixtures``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.harness import HARD_FRAME_LIMIT, SESSION_FRAME_LIMIT
from tests.support.stack import Stack, started_stack

HOSTILE_ENV = {
    "LINGUA_WS_SESSION_MAX_FRAME_BYTES": str(SESSION_FRAME_LIMIT),
    "LINGUA_WS_MAX_FRAME_BYTES": str(HARD_FRAME_LIMIT),
    "LINGUA_NO_NODE_WAIT_MS": "200",
}


def _start(
    env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    services: list[tuple[str, str]],
) -> Iterator[Stack]:
    with started_stack({**env, **HOSTILE_ENV}, tmp_path, request, services) as s:
        yield s


@pytest.fixture
def node_stack(redis, stack_env, tmp_path, request) -> Iterator[Stack]:
    """node-manager + gateway: registrations are real RPCs, heartbeats reach Redis."""
    yield from _start(stack_env, tmp_path, request, [("nm-1", "node-manager"), ("gw-a", "gateway")])


@pytest.fixture
def session_stack(redis, stack_env, tmp_path, request) -> Iterator[Stack]:
    """node-manager + dispatcher + gateway: every utterance gets its answer (no node runs,
    so the answer is NO_AVAILABLE_NODE, typed, at once)."""
    yield from _start(
        stack_env,
        tmp_path,
        request,
        [("nm-1", "node-manager"), ("disp-1", "dispatcher"), ("gw-a", "gateway")],
    )
