"""The supervised local stack seen from the gateway's /metrics (with LOOKALIKE_GATEWAY_STACK_STATUS_FILE set,
as `lookalike serve` does): each scrape reads the supervisor's status file (lookalike.stack_status) and
exports `lookalike_stack_restarts_total{child}` (restarts since the stack started) and
`lookalike_stack_child_up{child}` (1 up, 0 down or restarting). Without the file nothing is exported."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from lookalike import stack_status


class StackStatusMetrics:
    """A collector reading the status file on every collect."""

    def __init__(self, path: Path):
        self.path = path

    def describe(self) -> list[Metric]:
        return []  # unchecked: the children are only known from the file

    def collect(self) -> Iterator[Metric]:
        children = stack_status.read(self.path)
        if children is None:
            return
        restarts = CounterMetricFamily("lookalike_stack_restarts", "Restarts of a child of the local stack by "
                                       "its supervisor (lookalike serve)", labels=["child"])
        up = GaugeMetricFamily("lookalike_stack_child_up", "1 when the child of the local stack is up, 0 while "
                               "it is down or restarting", labels=["child"])
        for name, record in sorted(children.items()):
            restarts.add_metric([name], float(record.get("restarts", 0)))
            up.add_metric([name], 1.0 if record.get("state") == "up" else 0.0)
        yield restarts
        yield up


def install(path: Path | None, registry: CollectorRegistry = REGISTRY) -> StackStatusMetrics | None:
    if not path:
        return None
    collector = StackStatusMetrics(path)
    registry.register(collector)
    return collector
