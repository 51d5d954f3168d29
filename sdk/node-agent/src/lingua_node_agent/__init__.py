"""Lingua node agent SDK: connect a node to the Lingua scheduler's gateway (``/ws/node``).

Build an :class:`AgentConfig`, implement a :class:`JobHandler`, and ``await
NodeAgent(config, handler).run()``; the agent registers, heartbeats, reconnects, takes and
reports jobs, and drains on :meth:`NodeAgent.stop`. :class:`Simulator` runs many simulated
nodes in one process for load tests.
"""

from lingua_node_agent.agent import NodeAgent
from lingua_node_agent.backoff import Backoff
from lingua_node_agent.config import AgentConfig, config_from_mapping, load_toml
from lingua_node_agent.errors import ConfigError, RegistrationRejected
from lingua_node_agent.handlers import EchoHandler, SimulatedHandler, load_handler
from lingua_node_agent.heartbeat import HeartbeatPacer
from lingua_node_agent.job_runner import JobRunner
from lingua_node_agent.jobs import JobContext, JobHandler, JobOutcome
from lingua_node_agent.resources import PsutilSampler, ResourceSampler, SimulatedSampler
from lingua_node_agent.simulator import SimConfig, Simulator
from lingua_node_agent.state import NodeIdStore
from lingua_node_agent.ticker import HeartbeatTicker

__all__ = [
    "AgentConfig",
    "Backoff",
    "ConfigError",
    "EchoHandler",
    "HeartbeatPacer",
    "HeartbeatTicker",
    "JobContext",
    "JobHandler",
    "JobOutcome",
    "JobRunner",
    "NodeAgent",
    "NodeIdStore",
    "PsutilSampler",
    "RegistrationRejected",
    "ResourceSampler",
    "SimConfig",
    "SimulatedHandler",
    "SimulatedSampler",
    "Simulator",
    "config_from_mapping",
    "load_handler",
    "load_toml",
]
