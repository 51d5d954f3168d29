"""A gateway restart never refuses a new connection (docs/operations.md, "Restarting a gateway
without refusing connections").

lingua's node agent reconnects once, 5 s after its socket closes; a refused attempt loses
the node until someone restarts it. So the new gateway starts on the same port (SO_REUSEPORT)
and only once it serves is the old one sent SIGTERM; its drain stops listening first. A
probe (``scripts/restart_probe.py``) opens a connection every 20 ms throughout; the bound
on the refusal window is generous (a noisy machine) and never a tight timing: without the
handover the window is the whole start-up of a gateway (about 3 s here, 5.6 s measured by
hand on a busier one).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from lingua_node_agent import NodeAgent
from lingua_shared.devstack import free_port
from tests.support.agents import agent_task, node
from tests.support.helpers import eventually, node_state, register_frame
from tests.support.stack import started_stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 2.0  # "accepted again within about 2 s": generous, the machine is noisy


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"_lingua_{name}", REPO / "scripts" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


probe_mod = _load("restart_probe")
stack_mod = _load("stack")


async def one_shot_agent(
    url: str, node_id: str, registered: asyncio.Event, redis, keys
) -> dict[str, object]:
    """Like lingua's agent: register; when the socket closes, reconnect exactly ONCE (at
    once: the moment closest to the old gateway's drain, the hardest one) and register.
    What it saw, and which gateway Redis says holds it then."""
    async with connect(url) as ws:
        await ws.send(register_frame(node_id))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "node_register_ack", ack
        registered.set()
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
        first_close = ws.close_code
    try:
        async with connect(url, open_timeout=5) as ws:
            await ws.send(register_frame(node_id))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
            state = await node_state(redis, keys, node_id)
            return {
                "first_close": first_close,
                "again": ack.get("type"),
                "held_by": state.get("gateway_id"),
            }
    except Exception as exc:  # refused, reset, 503, closed, timed out: the node is lost
        return {"first_close": first_close, "again": repr(exc), "held_by": None}


def _report(summary) -> str:
    return "\n".join(summary.lines())


async def test_gateway_restart_refuses_nothing_and_nodes_come_back(
    redis, stack_env, tmp_path, request
):
    services = [("nm-1", "node-manager"), ("gw-a", "gateway")]
    with started_stack(stack_env, tmp_path, request, services) as stack:
        old = stack.procs["gw-a"]
        url = stack.gateway_url("gw-a")
        agent = node(stack, "restart-node-1")
        oneshot_registered = asyncio.Event()
        async with agent_task(agent):
            await asyncio.wait_for(agent.registered.wait(), 10)
            oneshot = asyncio.create_task(
                one_shot_agent(url, "restart-oneshot-1", oneshot_registered, redis, stack.keys)
            )
            await asyncio.wait_for(oneshot_registered.wait(), 10)
            registrations = agent.registrations

            stop = asyncio.Event()
            probing = asyncio.create_task(probe_mod.probe(url, stop, 0.02))
            await asyncio.sleep(0.5)
            # what `scripts/stack.py restart gateway` does: the new process on the SAME
            # port, serving (its own listening socket and /readyz) before the old one gets
            # SIGTERM; the old one stops listening first, then closes nodes with 1012
            try:
                new = stack.start("gw-b", "gateway", port=old.port)
                await asyncio.to_thread(stack_mod.wait_serving, new, 30)
                assert await asyncio.to_thread(old.stop, 20) == 0
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                attempts = await probing

            marks = probe_mod.read_log_marks(
                "\n".join(p.read_text() for p in (old.log_path, new.log_path) if p)
            )
            summary = probe_mod.summarize(attempts, marks)
            print(_report(summary))
            assert summary.outcomes.get("accepted", 0) > 10, _report(summary)
            assert summary.refusal_window_s < BOUND_S, _report(summary)
            assert summary.longest_without_accept_s < BOUND_S, _report(summary)
            assert marks.draining, "the old gateway logged no gateway.draining"
            assert summary.first_accept_after_stop_s is not None, _report(summary)
            assert summary.first_accept_after_stop_s < BOUND_S, _report(summary)

            # the node agent connected before the restart is registered again, on gw-b
            await eventually(
                lambda: _registered_on(redis, stack, agent, registrations, "gw-b"),
                what="the agent registered again on the new gateway",
            )
            assert 1012 in agent.close_codes, agent.close_codes
            # the one-shot agent's single reconnect was accepted and registered
            result = await asyncio.wait_for(oneshot, 10)
            assert result == {
                "first_close": 1012,
                "again": "node_register_ack",
                "held_by": "gw-b",
            }


async def _registered_on(redis, stack, agent: NodeAgent, before: int, gateway: str) -> bool:
    if not agent.registered.is_set() or agent.registrations <= before:
        return False
    state = await node_state(redis, stack.keys, agent.node_id or "")
    return state.get("connected") == "1" and state.get("gateway_id") == gateway


def _stack_cmd(run_dir: Path, env: dict[str, str], *args: str, timeout: float = 90):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stack.py"), "--run-dir", str(run_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_stack_py_restart_gateway(redis, stack_env, tmp_path):
    """The command itself: `stack.py up`, then `stack.py restart gateway` under the probe
    (on free ports, in a run directory of its own), then `down`."""
    run_dir = tmp_path / "run"
    ports = {name: free_port() for name in stack_mod.SERVICES}
    env = {
        **os.environ,
        **stack_env,
        **{f"LINGUA_{n.upper().replace('-', '_')}_PORT": str(p) for n, p in ports.items()},
    }
    up = await asyncio.to_thread(_stack_cmd, run_dir, env, "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        pidfile = run_dir / "pids" / "gateway.pid"
        old_pid = int(pidfile.read_text())
        url = f"ws://127.0.0.1:{ports['gateway']}/ws/node"
        command = [
            sys.executable,
            str(REPO / "scripts" / "stack.py"),
            "--run-dir",
            str(run_dir),
            "restart",
            "gateway",
        ]
        summary, code, _ = await probe_mod.measure(
            url, command, 0.0, 0.5, 0.5, 0.02, run_dir / "logs" / "gateway.log", env
        )
        print(_report(summary))
        assert code == 0
        new_pid = int(pidfile.read_text())
        assert new_pid != old_pid
        assert _alive(new_pid) and not _alive(old_pid)
        assert summary.outcomes.get("accepted", 0) > 10, _report(summary)
        assert summary.refusal_window_s < BOUND_S, _report(summary)
        assert summary.longest_without_accept_s < BOUND_S, _report(summary)
        assert summary.stopped_listening_at is not None, _report(summary)
        status = await asyncio.to_thread(_stack_cmd, run_dir, env, "status")
        assert f"gateway       running, pid {new_pid}" in status.stdout, status.stdout
    finally:
        down = await asyncio.to_thread(_stack_cmd, run_dir, env, "down")
        assert down.returncode == 0, down.stdout + down.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True
