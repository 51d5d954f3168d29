"""The RabbitMQ bus: one way every service declares, publishes and consumes.

- :mod:`~lingua_shared.bus.topology`: exchanges and queues as data (:class:`Topology`), and
  their declaration;
- :mod:`~lingua_shared.bus.connection`: a robust connection with a heartbeat;
- :mod:`~lingua_shared.bus.publisher`: confirmed, mandatory publishes (:class:`Publisher`),
  coalesced per loop tick on the job path;
- :mod:`~lingua_shared.bus.consumer`: :func:`consume`, with explicit ack / requeue /
  dead-letter rules, batches item by item, and :class:`InFlight` for a clean drain;
- :mod:`~lingua_shared.bus.cleanup`: deleting a bus (tests and benchmarks).

Every public name is importable from ``lingua_shared.bus``.
"""

from lingua_shared.bus.cleanup import delete_bus, delete_topology
from lingua_shared.bus.connection import connect, with_heartbeat
from lingua_shared.bus.consumer import (
    TRANSIENT_BACKOFF_S,
    TRANSIENT_ERRORS,
    TRANSIENT_RETRY_S,
    Handler,
    InFlight,
    consume,
)
from lingua_shared.bus.publisher import (
    BATCH_MAX_BYTES,
    BATCH_MAX_ITEMS,
    BATCH_TYPE,
    BusOverloaded,
    Publisher,
    Unroutable,
    encode,
)
from lingua_shared.bus.topology import (
    DISPATCHER_KEYS,
    NODE_MANAGER_KEYS,
    ExchangeSpec,
    QueueSpec,
    Topology,
    TopologyMismatch,
    declare_queue,
    declare_topology,
)

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_ITEMS",
    "BATCH_TYPE",
    "DISPATCHER_KEYS",
    "NODE_MANAGER_KEYS",
    "TRANSIENT_BACKOFF_S",
    "TRANSIENT_ERRORS",
    "TRANSIENT_RETRY_S",
    "BusOverloaded",
    "ExchangeSpec",
    "Handler",
    "InFlight",
    "Publisher",
    "QueueSpec",
    "Topology",
    "TopologyMismatch",
    "Unroutable",
    "connect",
    "consume",
    "declare_queue",
    "declare_topology",
    "delete_bus",
    "delete_topology",
    "encode",
    "with_heartbeat",
]
