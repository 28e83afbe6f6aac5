"""Prometheus metrics of the gateway, on a registry owned by the app.

One registry per app (not prometheus_client's global one) so several apps in one process,
as in the tests, keep separate counts. Other components register their own metrics on
`Metrics.registry`; `/metrics` exposes everything on it.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "openclaw_requests",
            "Chat requests by model (the answering one; for a failed request the last one called, or the one named), "
            "routing profile and status",
            ["model", "profile", "status"], registry=r,
        )
        self.latency = Histogram(
            "openclaw_request_latency_seconds", "End-to-end request latency (until the last byte)",
            ["model", "stream"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "openclaw_ttft_seconds", "Time to the first output token of streamed answers",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.routing_seconds = Histogram(
            "openclaw_routing_seconds", "Time spent deciding (embedding + prediction + policy)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25), registry=r,
        )
        self.tokens = Counter("openclaw_tokens", "Tokens by model and direction", ["model", "kind"], registry=r)
        self.cost = Counter("openclaw_cost_usd", "Upstream spend in USD by model", ["model"], registry=r)
        self.saved_cost = Counter("openclaw_saved_cost_usd", "Spend avoided by cache hits, in USD", registry=r)
        self.choices = Counter(
            "openclaw_routing_choices", "Models chosen for routed requests (after the bandit and a tool loop's kept model), by profile", ["model", "profile"], registry=r
        )
        self.attempts = Counter(
            "openclaw_upstream_attempts",
            "Upstream calls by model and outcome: ok, an error kind, or abandoned (its client left, or shutdown cut it)",
            ["model", "outcome"], registry=r,
        )
        self.fallbacks = Counter(
            "openclaw_fallbacks", "Failovers from one model to the next, by the error that caused them",
            ["from_model", "reason"], registry=r,
        )
        self.cache = Counter("openclaw_cache_results", "Cache lookups by result", ["result"], registry=r)
        self.circuit_open = Gauge("openclaw_circuit_open", "1 while a model's circuit is open", ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
