"""Prometheus metrics of the operator, served on ``COMPOSE_METRICS_PORT`` at ``/metrics``.

:class:`Metrics` owns its own registry (so tests can create several without clashing) and is
fed by :mod:`compose_operator.reconciler` after each status write; ``__main__`` starts the HTTP
server. Kopf has no exporter of its own.
"""

from __future__ import annotations

import contextlib
from typing import Any

import prometheus_client

from compose_api import models

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class Metrics:
    """Jobs by phase, transitions, queue wait and run time, queue depth, reconcile errors."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry or prometheus_client.CollectorRegistry()
        self.jobs = prometheus_client.Gauge(
            "compose_jobs",
            "CompositionJobs known to the operator, by namespace and phase.",
            ["namespace", "phase"],
            registry=self.registry,
        )
        self.transitions = prometheus_client.Counter(
            "compose_condition_transitions",
            "Condition changes written to CompositionJob status.",
            ["type", "status", "reason"],
            registry=self.registry,
        )
        self.queue_wait = prometheus_client.Histogram(
            "compose_queue_wait_seconds",
            "Time from creation to admission (the child Job starting).",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.run_time = prometheus_client.Histogram(
            "compose_run_seconds",
            "Time from admission to a terminal phase, by phase.",
            ["phase"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = prometheus_client.Gauge(
            "compose_queue_depth",
            "CompositionJobs waiting for a slot under the per-namespace cap.",
            ["namespace"],
            registry=self.registry,
        )
        self.reconcile_errors = prometheus_client.Counter(
            "compose_reconcile_errors",
            "Reconciliations that raised, by error type.",
            ["error"],
            registry=self.registry,
        )
        self.pool_demand = prometheus_client.Gauge(
            "compose_pool_demand",
            "Jobs that want a worker of the pool: queued (past the caps) plus running. A KEDA "
            "ScaledObject scales the pool from it.",
            ["namespace", "pool"],
            registry=self.registry,
        )
        self.pool_workers = prometheus_client.Gauge(
            "compose_pool_workers",
            "Workers of the pool with a fresh Lease, by state (ready, busy, idle, draining).",
            ["namespace", "pool", "state"],
            registry=self.registry,
        )
        self._phases: dict[str, tuple[str, str]] = {}

    def observe_phase(self, uid: str, namespace: str, phase: str | None) -> None:
        """Move one job between phase gauges (``phase`` None: the job is gone)."""
        before = self._phases.pop(uid, None)
        if before is not None:
            self.jobs.labels(*before).dec()
        if phase is not None:
            self._phases[uid] = (namespace, phase)
            self.jobs.labels(namespace, phase).inc()

    def observe_finish(self, status: models.CompositionJobStatus) -> None:
        timings = status.timings
        if timings is not None and timings.queued is not None:
            self.queue_wait.observe(timings.queued)
        if status.start_time and status.completion_time and status.phase:
            seconds = (status.completion_time - status.start_time).total_seconds()
            self.run_time.labels(str(status.phase)).observe(max(0.0, seconds))

    def observe_pool(self, namespace: str, pool: str, *, demand: int, workers: Any) -> None:
        self.pool_demand.labels(namespace, pool).set(demand)
        for state in ("ready", "busy", "idle", "draining"):
            self.pool_workers.labels(namespace, pool, state).set(getattr(workers, state))

    def forget_pool(self, namespace: str, pool: str) -> None:
        for gauge, labels in (
            (self.pool_demand, [(namespace, pool)]),
            (
                self.pool_workers,
                [(namespace, pool, s) for s in ("ready", "busy", "idle", "draining")],
            ),
        ):
            for values in labels:
                with contextlib.suppress(KeyError):
                    gauge.remove(*values)

    def serve(self, port: int) -> None:
        """Start the ``/metrics`` HTTP server in a background thread (port 0: disabled)."""
        if port:
            prometheus_client.start_http_server(port, registry=self.registry)
