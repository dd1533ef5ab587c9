"""Prometheus metrics of the gateway, on a registry of its own (one per app, so tests can build
many apps in one process).

The app's middleware counts every request; the handlers count jobs created and refusals; the
callback loop counts deliveries. ``GET /metrics`` renders the registry.
"""

from __future__ import annotations

import prometheus_client


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.requests = prometheus_client.Counter(
            "compose_gateway_requests_total",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "compose_gateway_request_duration_seconds",
            "Time to answer an HTTP request, by route (wait mode included).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.jobs_created = prometheus_client.Counter(
            "compose_gateway_jobs_created_total",
            "CompositionJobs created, by input kind (json or multipart).",
            ["input"],
            registry=self.registry,
        )
        self.refusals = prometheus_client.Counter(
            "compose_gateway_refusals_total",
            "Requests refused before reaching Kubernetes, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.callbacks = prometheus_client.Counter(
            "compose_gateway_callbacks_total",
            "Callback attempts, by outcome (delivered, retry, failed, refused).",
            ["outcome"],
            registry=self.registry,
        )

        self.key_file_errors = prometheus_client.Counter(
            "compose_gateway_key_file_errors_total",
            "Times the API key file could not be (re)loaded; the last good keys stay in use.",
            registry=self.registry,
        )

        self.rate_limit_fallbacks = prometheus_client.Counter(
            "compose_gateway_rate_limit_fallbacks_total",
            "Requests limited in this replica because the shared (Redis) rate limit did not "
            "answer.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
