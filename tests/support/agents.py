"""Node agents for the suites: ``lingua_node_agent.NodeAgent`` in the test's event loop
(``agent``, ``node``, ``lingua_node``; run with ``running`` or ``agent_task``), or
``lingua-node-agent simulate`` as a process a test can SIGKILL or SIGSTOP (``NodeProcess``,
``node_processes``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from lingua_node_agent import AgentConfig, JobContext, JobOutcome, NodeAgent, SimulatedHandler
from lingua_shared.protocol import JobAssign
from tests.support.helpers import eventually, node_ready
from tests.support.stack import Stack


def node_url(stack: Stack, gw: str = "gw-a") -> str:
    """Where nodes connect: ``gw``'s /ws/node."""
    return stack.gateway_url(gw)


# -- in-process agents -----------------------------------------------------------------------
def agent_config(gateway: str | Sequence[str], node_id: str, **over: Any) -> AgentConfig:
    """The suites' node: eu / a100, serving en, ja and zh, beating every 200 ms (a stack's
    node TTL is 1 s), reconnecting within half a second; ``gateway`` one URL or several
    (replicas, tried in turn). ``over`` replaces any field."""
    cfg: dict[str, Any] = {
        "gateway": gateway if isinstance(gateway, str) else ",".join(gateway),
        "node_id": node_id,
        "region": "eu",
        "gpu_tier": "a100",
        "lang_sets": [["en", "ja", "zh"]],
        "heartbeat_interval_ms": 200,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.5,
    }
    cfg.update(over)
    return AgentConfig(**cfg)


def agent(
    gateway: str | Sequence[str],
    node_id: str,
    handler: Any = None,
    *,
    processing_ms: int = 20,
    **over: Any,
) -> NodeAgent:
    """An agent of ``agent_config(gateway, node_id, **over)`` running ``handler``, by default
    a simulated engine taking ``processing_ms`` per job."""
    return NodeAgent(
        agent_config(gateway, node_id, **over),
        handler or SimulatedHandler(processing_ms=processing_ms),
    )


def node(stack: Stack, node_id: str, handler: Any = None, **over: Any) -> NodeAgent:
    """A node of the job-path stacks: on gw-a (clients are on gw-b), two slots."""
    return agent(stack.gateway_url("gw-a"), node_id, handler, **{"capacity": 2, **over})


def lingua_node(gateway_url: str, node_id: str, handler: Any, **over: Any) -> NodeAgent:
    """Our agent in its ``lingua`` profile, as lingua's own: no acks, ignores node_control and
    errors, one reconnect, a 1005 goodbye."""
    cfg: dict[str, Any] = {
        "gateway": gateway_url,
        "node_id": node_id,
        "profile": "lingua",
        "asr_langs": ["en", "zh"],
        "semantic_langs": ["en", "zh"],
        "tts_langs": ["en", "zh"],
        "heartbeat_interval_ms": 1000,  # lingua beats every 15 s; the tests cannot wait so long
        "reconnect_delay_s": 1.0,  # lingua waits 5 s
    }
    cfg.update(over)
    return NodeAgent(AgentConfig(**cfg), handler)


# -- running them ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def running(*agents: NodeAgent, register_timeout: float = 15.0) -> AsyncIterator[None]:
    """Node agents running, each registered, then stopped."""
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        for a in agents:
            await asyncio.wait_for(a.registered.wait(), register_timeout)
        yield
    finally:
        for a in agents:
            a.stop(drain=False)
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def agent_task(agent: NodeAgent) -> AsyncIterator[asyncio.Task[None]]:
    """One agent's ``run()`` as a task, not waiting for its registration (the test watches
    it, or stops it itself); stopped at the end, waiting at most 5 s."""
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        agent.stop(drain=False)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


# -- engines -----------------------------------------------------------------------------------
class ScriptedHandler:
    """A node's engine for the tests: each job takes ``delay_s`` and its text is
    ``texts(index)``; records when each job started and finished."""

    def __init__(self, delay_s: float = 0.2, texts: Callable[[int], str] | None = None) -> None:
        self.delay_s = delay_s
        self.texts = texts or (lambda i: f"utterance {i}")
        self.calls: list[int] = []
        self.finished: dict[int, float] = {}
        self.started = asyncio.Event()

    async def handle(self, job: JobAssign, ctx: JobContext) -> JobOutcome:
        self.calls.append(job.utterance_index)
        self.started.set()
        await asyncio.sleep(self.delay_s)
        self.finished[job.utterance_index] = time.monotonic()
        text = self.texts(job.utterance_index)
        return JobOutcome(text_asr=text, text_translated=f"[en] {text}")


# -- agents as processes -----------------------------------------------------------------------
class NodeProcess:
    """``lingua-node-agent simulate --count 1`` as a child process: a node we may kill."""

    def __init__(
        self,
        gateway: str,
        node_prefix: str,
        log: Path,
        *,
        processing_ms: int = 20,
        capacity: int = 2,
    ) -> None:
        self.node_id = f"{node_prefix}-00000"
        argv = [
            sys.executable, "-m", "lingua_node_agent", "simulate",
            "--count", "1", "--gateway", gateway, "--id-prefix", node_prefix,
            "--regions", "eu", "--gpu-tiers", "a100", "--lang-sets", "en,ja,zh",
            "--processing-ms", str(processing_ms), "--capacity", str(capacity),
            "--heartbeat-interval-ms", "200", "--status-interval-s", "3600",
            "--drain-timeout-s", "1",
        ]  # fmt: skip
        out = open(log, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.proc.wait(10)


@contextlib.asynccontextmanager
async def node_processes(
    stack: Stack, redis: Redis, *specs: tuple[str, dict]
) -> AsyncIterator[list[NodeProcess]]:
    """Simulated nodes as processes on gw-a (``(node prefix, NodeProcess options)`` each),
    each registered and ready before the body; killed at the end."""
    procs = [
        NodeProcess(node_url(stack, "gw-a"), prefix, stack.log_dir / f"{prefix}.log", **kw)
        for prefix, kw in specs
    ]
    try:
        for p in procs:
            await eventually(
                lambda p=p: node_ready(redis, stack.keys, p.node_id),
                timeout=20,
                what=f"{p.node_id} ready",
            )
        yield procs
    finally:
        for p in procs:
            p.stop()
