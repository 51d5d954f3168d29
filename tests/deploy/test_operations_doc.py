"""docs/operations.md names metrics operators alert on: each must be one the services
register, and each metric they register must be listed there."""

from __future__ import annotations

import re

from lingua_dispatcher.metrics import Metrics as DispatcherMetrics
from lingua_gateway.metrics import Metrics as GatewayMetrics
from lingua_node_manager.metrics import Metrics as NodeManagerMetrics
from lingua_stats.metrics import Metrics as StatsMetrics
from tests.deploy.parsing import REPO

DOC = REPO / "docs" / "operations.md"


def registered() -> set[str]:
    """Exposed metric names: counters with their `_total`; the dispatcher's Info excluded."""
    names = set()
    for metrics in (GatewayMetrics(), NodeManagerMetrics(), DispatcherMetrics("x"), StatsMetrics()):
        for family in metrics.registry.collect():
            if family.type == "info":
                continue
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def documented() -> set[str]:
    return set(re.findall(r"`(lingua_[a-z_]+)[`{]", DOC.read_text()))


def test_documented_metrics_exist() -> None:
    assert documented() - registered() == set()


def test_every_metric_is_documented() -> None:
    assert registered() - documented() == set()


def test_the_check_sees_metric_names() -> None:
    assert {"lingua_jobs_total", "lingua_heartbeat_apply_lag_seconds"} <= documented()
    assert "lingua_gateway_connections" in registered()
