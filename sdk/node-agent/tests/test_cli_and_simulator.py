"""The CLI (config precedence, exit codes, signals) and the many-node simulator."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys

import pytest

from lingua_node_agent import ConfigError, SimConfig, SimulatedHandler, Simulator
from lingua_node_agent.cli import agent_config_from_args, build_parser, sim_config_from_args
from lingua_shared.protocol import NodeRegister, derive_capabilities


def parse_run(*argv: str):
    return agent_config_from_args(build_parser().parse_args(["run", *argv]))


def test_flags_override_the_toml_file(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        'gateway = "ws://gw.example:5010/ws/node"\nregion = "eu"\ncapacity = 2\n'
        'lang_sets = [["en", "zh"], ["en", "ja", "zh"]]\ntts-langs = "en,zh"\n'
        "heartbeat_interval_ms = 500\n"
    )
    cfg = parse_run("--config", str(path), "--capacity", "8", "--asr-langs", "en,ja,zh,de")
    assert cfg.gateway == "ws://gw.example:5010/ws/node" and cfg.region == "eu"
    assert cfg.capacity == 8 and cfg.heartbeat_interval_ms == 500
    assert cfg.lang_sets == [["en", "zh"], ["en", "ja", "zh"]]
    assert cfg.tts_langs == ["en", "zh"] and cfg.asr_langs == ["en", "ja", "zh", "de"]
    assert cfg.effective_semantic_langs() == ["en", "ja", "zh"]  # union of the sets
    flags_only = parse_run("--lang-sets", "en,zh;en,ja,zh", "--gpu-tier", "t4")
    assert flags_only.lang_sets == [["en", "zh"], ["en", "ja", "zh"]]
    assert flags_only.gateway == "ws://127.0.0.1:5010/ws/node"


def test_bad_toml_settings_are_config_errors(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("capcity = 8\n")
    with pytest.raises(ConfigError, match="capcity"):
        parse_run("--config", str(path))
    path.write_text('capacity = "many"\n')
    with pytest.raises(ConfigError, match="number"):
        parse_run("--config", str(path))
    with pytest.raises(ConfigError, match="gateway"):
        parse_run("--gateway", "http://nope")


async def cli(*argv: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lingua_node_agent", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process, limit_s: float = 10) -> tuple[int, str, str]:
    async with asyncio.timeout(limit_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_invalid_capabilities_exit_2_before_connecting():
    code, _, err = await finish(await cli("run", "--lang-sets", "en", "--gateway", "ws://x:1/"))
    assert code == 2
    assert "lang_set" in err and "at least two" in err


async def test_cli_rejected_registration_exits_1_with_the_message(gateway):
    gateway.register_reply = lambda msg, conn: {
        "type": "error",
        "code": "INVALID_CAPABILITY_SCHEMA",
        "message": "asr languages missing",
    }
    code, _, err = await finish(await cli("run", "--gateway", gateway.url))
    assert code == 1
    assert "INVALID_CAPABILITY_SCHEMA" in err and "asr languages missing" in err


async def test_cli_sigterm_drains_and_exits_0(gateway, tmp_path):
    state = tmp_path / "id.json"
    proc = await cli("run", "--gateway", gateway.url, "--heartbeat-interval-ms", "200",
                     "--region", "eu", "--state-file", str(state))  # fmt: skip
    try:
        await gateway.wait_for(lambda: gateway.of_type("node_heartbeat"), limit_s=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _, err = await finish(proc)
    assert code == 0
    assert await gateway.closed(0) == 1000
    assert gateway.of_type("node_register")[0].msg["region"] == "eu"
    assert json.loads(state.read_text()) == {"node_id": "gw-1"}
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    registered = [entry for entry in logs if entry["msg"] == "registered"]
    assert registered and registered[0]["node_id"] == "gw-1"


async def test_simulator_registers_distinct_nodes_spread_over_pools(gateway):
    lines: list[str] = []
    cfg = SimConfig(count=20, gateway=gateway.url, id_prefix="", heartbeat_interval_ms=200,
                    regions=["eu", "us"], gpu_tiers=["a100", "t4"], processing_ms=20,
                    lang_sets=[["en", "zh"], ["en", "ja", "zh"]], status_interval_s=0.2,
                    seed=7)  # fmt: skip
    sim = Simulator(cfg, status=lines.append)
    task = asyncio.create_task(sim.run())
    try:
        await gateway.wait_for(lambda: len(sim.registered_ids()) == 20, limit_s=5)
        registers = gateway.of_type("node_register")
        assert len(registers) == 20 and len(gateway.conns) == 20
        acked = {f"gw-{i}" for i in range(1, 21)}
        assert sim.registered_ids() == acked
        combos = set()
        for frame in registers:
            caps = derive_capabilities(NodeRegister.model_validate(frame.msg))
            combos.add((caps.region, caps.gpu_tier, tuple(map(tuple, caps.lang_sets))))
        assert len(combos) == 8  # 2 regions x 2 tiers x 2 language sets

        def beats_per_node() -> dict[str, int]:
            counts = dict.fromkeys(acked, 0)
            for frame in gateway.of_type("node_heartbeat"):
                counts[frame.msg["node_id"]] += 1
            return counts

        # Periodic beats from every node (the shared ticker), not just the one after the ack.
        await gateway.wait_for(lambda: min(beats_per_node().values()) >= 3)
        conn = next(f.conn for f in registers)
        await gateway.send(
            {
                "type": "job_assign",
                "job_id": "sim-job",
                "session_id": "s",
                "utterance_index": 3,
                "src_lang": "en",
                "tgt_lang": "zh",
            },
            conn,
        )
        result = (await gateway.nth("job_result")).msg
        assert result["success"] and result["text_translated"] == "[sim] en->zh #3"
        await gateway.wait_for(lambda: any("registered=20/20" in line for line in lines))
    finally:
        sim.stop()
        async with asyncio.timeout(5):
            await task
    assert all(code == 1000 for code in gateway.close_codes.values())
    assert len(gateway.close_codes) == 20 and not sim.rejected


async def test_simulate_command_uses_prefixed_ids(gateway):
    proc = await cli("simulate", "--count", "3", "--gateway", gateway.url, "--duration-s", "1.5",
                     "--status-interval-s", "0.5", "--heartbeat-interval-ms", "200")  # fmt: skip
    code, out, _ = await finish(proc)
    assert code == 0
    ids = {f.msg["node_id"] for f in gateway.of_type("node_register")}
    assert ids == {"sim-00000", "sim-00001", "sim-00002"}
    assert "registered=3/3" in out
    assert sorted(gateway.close_codes.values()) == [1000, 1000, 1000]


def test_profile_flags_reach_the_configs(tmp_path):
    cfg = parse_run("--profile", "lingua", "--reconnect-delay-s", "1.5")
    assert cfg.lingua and cfg.reconnect_delay_s == 1.5
    assert cfg.heartbeat_interval_ms is None and cfg.effective_heartbeat_interval_ms() == 15000
    assert parse_run().profile == "standard"
    path = tmp_path / "agent.toml"
    path.write_text('profile = "lingua"\nheartbeat_interval_ms = 2000\n')
    assert parse_run("--config", str(path)).effective_heartbeat_interval_ms() == 2000
    assert parse_run("--config", str(path), "--profile", "standard").profile == "standard"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--profile", "electron"])

    def parse_sim(*argv: str) -> SimConfig:
        return sim_config_from_args(build_parser().parse_args(["simulate", *argv]))

    sim = parse_sim("--count", "2", "--profile", "lingua", "--withhold-rate", "0.25",
                    "--processing-ms", "40", "--processing-max-ms", "90")  # fmt: skip
    assert (sim.profile, sim.withhold_rate) == ("lingua", 0.25)
    assert (sim.processing_ms, sim.processing_max_ms) == (40, 90)
    node = sim.node_config(1)
    assert node.lingua and node.effective_heartbeat_interval_ms() == 15000
    assert parse_sim("--count", "2").node_config(0).effective_heartbeat_interval_ms() == 1000
    with pytest.raises(ConfigError, match="lingua"):
        parse_sim("--count", "2", "--withhold-rate", "0.5")  # only lingua withholds
    with pytest.raises(ConfigError, match="processing_max_ms"):
        parse_sim("--count", "2", "--processing-ms", "50", "--processing-max-ms", "10")


async def test_simulated_job_times_are_uniform_in_the_range():
    handler = SimulatedHandler(10, rng=random.Random(5), processing_max_ms=30)
    times = [handler._delay_ms() for _ in range(2000)]
    assert 10 <= min(times) < 11 and 29 < max(times) <= 30
    assert 19 < sum(times) / len(times) < 21


async def test_simulator_lingua_profile_withholds_repeated_texts(gateway):
    lines: list[str] = []
    cfg = SimConfig(count=1, gateway=gateway.url, id_prefix="", profile="lingua",
                    withhold_rate=1.0, processing_ms=5, processing_max_ms=15,
                    heartbeat_interval_ms=200, status_interval_s=0.2, seed=3)  # fmt: skip
    sim = Simulator(cfg, status=lines.append)
    task = asyncio.create_task(sim.run())
    try:
        await gateway.wait_for(lambda: len(sim.registered_ids()) == 1, limit_s=5)
        reg = gateway.of_type("node_register")[0].msg
        assert reg["node_id"] is None and "acks_jobs" not in reg and "region" not in reg
        for i in range(3):
            assign = {"type": "job_assign", "job_id": f"sj-{i}", "session_id": "s",
                      "utterance_index": i, "src_lang": "en", "tgt_lang": "zh"}  # fmt: skip
            await gateway.send(assign)
        agent = sim.agents[0]
        await gateway.wait_for(lambda: agent.jobs.completed == 3)
        result = (await gateway.nth("job_result")).msg
        assert result["job_id"] == "sj-0" and 5 <= result["processing_time_ms"] <= 15
        # every later result repeats the first text: the agent sends nothing for them
        assert agent.jobs.withheld == 2 and sim.handler.repeated == 2
        assert len(gateway.of_type("job_result")) == 1 and not gateway.of_type("job_ack")
        await gateway.wait_for(lambda: any("withheld=2" in line for line in lines))
    finally:
        sim.stop()
        async with asyncio.timeout(5):
            await task
    assert gateway.close_codes == {0: 1005}


async def test_cli_lingua_profile_registers_with_a_null_id_and_closes_without_status(gateway):
    proc = await cli("run", "--gateway", gateway.url, "--profile", "lingua")
    try:
        await gateway.wait_for(lambda: gateway.of_type("node_heartbeat"), limit_s=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _, err = await finish(proc)
    assert code == 0, err
    assert await gateway.closed(0) == 1005
    reg = gateway.of_type("node_register")[0].msg
    assert reg["node_id"] is None and "heartbeat_interval_ms" not in reg
