"""The Lua script layer: one module per ``lua/<name>.lua``, one enum of outcomes, one call path.

- :mod:`~lingua_shared.scripts.loader`: finds ``lua/``, inlines ``--@include``, caches scripts
  (EVALSHA, EVAL on NOSCRIPT), :class:`TickPipeline`, :func:`rerun_noscript`, and
  :class:`Durability` (a ``WAIT`` after each round trip of calls);
- :mod:`~lingua_shared.scripts.codes`: :class:`ScriptCode`, every outcome of every script;
- ``<name>.py`` for each script: ``NAME``, ``args(keys, **kw)`` (KEYS and ARGV in header
  order), ``parse(reply)`` and its typed ``Result``;
- :mod:`~lingua_shared.scripts.call`: ``run(script, target, keys=..., **kw)``, the one way
  to call a script, on a client or a :class:`TickPipeline`; ``run_all`` for a batch in one
  round trip; ``run_sync`` on a synchronous client;
- :class:`Scripts` (:mod:`~lingua_shared.scripts.facade`): every script on one client and
  cell, ``await scripts.<name>(**kw)`` through ``run``.

Each script's header (purpose, KEYS, the keys built from a declared prefix, ARGV, Returns)
is checked against its module and against the keys it really touches by
``shared/tests/test_script_contract.py`` and ``shared/tests/test_script_keys.py``.
"""

from lingua_shared.scripts._reply import CodeResult, Delivery
from lingua_shared.scripts.call import run, run_all, run_sync
from lingua_shared.scripts.codes import ScriptCode
from lingua_shared.scripts.facade import MODULES, Scripts
from lingua_shared.scripts.heartbeat_with_pool_assign import HeartbeatResult, require_registered
from lingua_shared.scripts.job_ack import Ack
from lingua_shared.scripts.job_create import Created
from lingua_shared.scripts.job_release import Release
from lingua_shared.scripts.loader import (
    INCLUDE_RE,
    CachedScript,
    Durability,
    ReplicasBehind,
    TickPipeline,
    bind,
    find_lua_dir,
    load_source,
    rerun_noscript,
)
from lingua_shared.scripts.node_offline import OfflineResult
from lingua_shared.scripts.nodes_summary import NodesSummary
from lingua_shared.scripts.outbox_claim import Pending
from lingua_shared.scripts.pools_summary import ShardSummary
from lingua_shared.scripts.register_node_v2 import RegisterResult
from lingua_shared.scripts.select_node import Selection
from lingua_shared.scripts.service_cooldown import Cooldown
from lingua_shared.scripts.session_bind import Binding

__all__ = [
    "INCLUDE_RE",
    "MODULES",
    "Ack",
    "Binding",
    "CachedScript",
    "CodeResult",
    "Cooldown",
    "Created",
    "Delivery",
    "Durability",
    "HeartbeatResult",
    "NodesSummary",
    "OfflineResult",
    "Pending",
    "RegisterResult",
    "Release",
    "ReplicasBehind",
    "ScriptCode",
    "Scripts",
    "Selection",
    "ShardSummary",
    "TickPipeline",
    "bind",
    "find_lua_dir",
    "load_source",
    "require_registered",
    "rerun_noscript",
    "run",
    "run_all",
    "run_sync",
]
