"""Command line: ``run`` one agent, or ``simulate`` many; exit codes for supervisors.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT drained, or the gateway asked us to
drain), 1 when the gateway refused the node permanently (``INVALID_CAPABILITY_SCHEMA``),
2 for an invalid configuration (caught before any connection). A supervisor should restart
on neither 1 nor 2 without a configuration change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence

from lingua_node_agent.agent import NodeAgent
from lingua_node_agent.config import (
    DEFAULT_GATEWAY,
    PROFILES,
    AgentConfig,
    config_from_mapping,
    load_toml,
    parse_lang_sets,
    parse_langs,
)
from lingua_node_agent.errors import ConfigError, RegistrationRejected
from lingua_node_agent.handlers import load_handler
from lingua_node_agent.jsonlog import setup_logging
from lingua_node_agent.simulator import SimConfig, Simulator

PROG = "lingua-node-agent"
RUN_FLAGS = (
    "gateway", "node_id", "state_file", "region", "gpu_tier", "lang_sets", "asr_langs",
    "semantic_langs", "tts_langs", "capacity", "heartbeat_interval_ms", "drain_timeout_s",
    "log_level", "handler", "token", "profile", "reconnect_delay_s",
)  # fmt: skip
PROFILE_HELP = (
    "standard (this SDK's agent) or lingua (behave exactly as lingua's own node agent, "
    "defects included; see the README)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Lingua node agent and simulator.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,simulate}")

    run = sub.add_parser("run", help="run one node agent")
    run.add_argument("--config", help="TOML file with the same settings (flags override it)")
    run.add_argument(
        "--gateway",
        help=f"gateway URL, or several comma-separated, tried in turn (default {DEFAULT_GATEWAY})",
    )
    run.add_argument("--node-id", help="node id (default: from --state-file, else assigned)")
    run.add_argument(
        "--token",
        default=os.environ.get("LINGUA_NODE_TOKEN"),
        help="node token when the gateway requires auth (default: $LINGUA_NODE_TOKEN)",
    )
    run.add_argument("--state-file", help="file that keeps the assigned node id across restarts")
    run.add_argument("--region", help="region label, e.g. eu")
    run.add_argument("--gpu-tier", help="GPU tier label, e.g. a100")
    run.add_argument("--lang-sets", help="language sets, e.g. 'en,zh;en,ja,zh'")
    run.add_argument("--asr-langs", help="ASR languages (default: union of the lang sets)")
    run.add_argument("--semantic-langs", help="Semantic languages (default: as ASR)")
    run.add_argument("--tts-langs", help="TTS languages (default: none, no TTS service)")
    run.add_argument("--capacity", type=int, help="max concurrent jobs (default 4)")
    run.add_argument("--profile", choices=PROFILES, help=f"{PROFILE_HELP} (default standard)")
    run.add_argument(
        "--heartbeat-interval-ms",
        type=int,
        help="heartbeat interval (default 1000; 15000 under the lingua profile)",
    )
    run.add_argument("--drain-timeout-s", type=float, help="max wait for jobs on stop (30)")
    run.add_argument(
        "--reconnect-delay-s",
        type=float,
        help="lingua profile: delay before its one reconnect (default 5)",
    )
    run.add_argument("--handler", help="job handler 'package.module:attr' (default: echo)")
    run.add_argument("--log-level", help="debug, info, warning, error (default info)")

    sim = sub.add_parser("simulate", help="run many simulated nodes in one process")
    sim.add_argument("--count", type=int, required=True, help="number of simulated nodes")
    sim.add_argument("--gateway", default=DEFAULT_GATEWAY)
    sim.add_argument("--profile", choices=PROFILES, default="standard", help=PROFILE_HELP)
    sim.add_argument(
        "--processing-ms",
        type=float,
        default=50.0,
        help="simulated job time (+-20%%), or the low end with --processing-max-ms",
    )
    sim.add_argument(
        "--processing-max-ms",
        type=float,
        help="job times uniform in [--processing-ms, this]",
    )
    sim.add_argument("--failure-rate", type=float, default=0.0, help="share of failed jobs")
    sim.add_argument(
        "--withhold-rate",
        type=float,
        default=0.0,
        help="lingua profile: share of results repeating the session's previous text, which "
        "the agent then withholds",
    )
    sim.add_argument("--lang-sets", default="en,zh;en,ja,zh", help="sets spread over the nodes")
    sim.add_argument("--regions", default="eu,us", help="regions spread over the nodes")
    sim.add_argument("--gpu-tiers", default="a100,t4", help="GPU tiers spread over the nodes")
    sim.add_argument("--id-prefix", default="sim", help="node ids PREFIX-00000...; '' = assigned")
    sim.add_argument(
        "--heartbeat-interval-ms", type=int, help="default 1000; 15000 under the lingua profile"
    )
    sim.add_argument("--capacity", type=int, default=4, help="max concurrent jobs per node")
    sim.add_argument("--drain-timeout-s", type=float, default=10.0)
    sim.add_argument("--duration-s", type=float, help="stop (draining) after this long")
    sim.add_argument("--status-interval-s", type=float, default=5.0)
    sim.add_argument("--ramp-s", type=float, default=0.0, help="spread the connects over this")
    sim.add_argument("--seed", type=int, help="random seed (reproducible jitter and failures)")
    sim.add_argument("--log-level", default="warning")
    return parser


def agent_config_from_args(args: argparse.Namespace) -> AgentConfig:
    """File first, then flags (a flag left out keeps the file's value)."""
    base = load_toml(args.config) if args.config else AgentConfig()
    return config_from_mapping({name: getattr(args, name) for name in RUN_FLAGS}, base)


def sim_config_from_args(args: argparse.Namespace) -> SimConfig:
    cfg = SimConfig(
        count=args.count,
        gateway=args.gateway,
        profile=args.profile,
        processing_ms=args.processing_ms,
        processing_max_ms=args.processing_max_ms,
        failure_rate=args.failure_rate,
        withhold_rate=args.withhold_rate,
        lang_sets=parse_lang_sets(args.lang_sets),
        regions=parse_langs(args.regions),
        gpu_tiers=parse_langs(args.gpu_tiers),
        id_prefix=args.id_prefix,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
        capacity=args.capacity,
        drain_timeout_s=args.drain_timeout_s,
        duration_s=args.duration_s,
        status_interval_s=args.status_interval_s,
        ramp_s=args.ramp_s,
        seed=args.seed,
    )
    cfg.validate()
    return cfg


def _install_signals(stop: Callable[[bool], None]) -> Callable[[], None]:
    """SIGTERM/SIGINT drain; a second SIGINT stops at once. Returns the uninstaller."""
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def on_signal() -> None:
        hits["n"] += 1
        stop(hits["n"] == 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    def uninstall() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return uninstall


async def _run_agent(cfg: AgentConfig) -> None:
    handler = load_handler(cfg.handler) if cfg.handler else None
    agent = NodeAgent(cfg, handler)
    uninstall = _install_signals(lambda drain: agent.stop(drain=drain, reason="signal"))
    try:
        await agent.run()
    finally:
        uninstall()


async def _simulate(cfg: SimConfig) -> int:
    sim = Simulator(cfg)
    uninstall = _install_signals(lambda drain: sim.stop(drain=drain))
    try:
        await sim.run()
    finally:
        uninstall()
    if sim.rejected:
        first = sim.rejected[0]
        print(f"{PROG}: {len(sim.rejected)} node(s) rejected: {first}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m lingua_node_agent``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            cfg = agent_config_from_args(args)
            setup_logging(cfg.log_level)
            asyncio.run(_run_agent(cfg))
            return 0
        sim_cfg = sim_config_from_args(args)
        setup_logging(args.log_level)
        return asyncio.run(_simulate(sim_cfg))
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    except RegistrationRejected as exc:
        print(
            f"{PROG}: the gateway rejected this node ({exc.code}): {exc.message}", file=sys.stderr
        )
        return 1
