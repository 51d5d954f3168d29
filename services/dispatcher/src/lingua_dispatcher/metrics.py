"""Prometheus metrics of the dispatcher (one registry per app, so tests can build many).

Empty of job metrics until the job path exists; ``lingua_dispatcher_info`` says which
instance answers a scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info


class Metrics:
    def __init__(self, instance_id: str) -> None:
        self.registry = CollectorRegistry()
        self.info = Info("lingua_dispatcher", "Dispatcher instance", registry=self.registry)
        self.info.info({"instance_id": instance_id})
