"""Live per-model health measured by the gateway, read by the router on every decision.

EWMA latency and time-to-first-token correct the router's predicted latency; the error rate,
the in-flight count, the circuit breaker and the RPM/TPM window decide whether a model is
`healthy` (eligible) right now.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from router.config import Config
from router.types import LiveStats
from service.breaker import CircuitBreaker, Claim, RateWindow, probe_lapse_s

ALPHA = 0.2  # weight of the newest observation: ~5 requests of memory, quick to notice a slowdown


@dataclass
class _Model:
    latency_s: float | None = None
    ttft_s: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0
    last_failure: str | None = None  # the kind of its latest failed call


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


class LiveState:
    def __init__(self, config: Config, breaker: CircuitBreaker | None = None, rates: RateWindow | None = None):
        rel = config.reliability
        self.limits = {m.name: m.limits for m in config.models}
        self.breaker = breaker or CircuitBreaker(rel.breaker_failures, rel.breaker_cooldown_s,
                                                 probe_lapse_s=probe_lapse_s(config))
        self.rates = rates or RateWindow()
        self._models: dict[str, _Model] = {m.name: _Model() for m in config.models}
        self._lock = threading.Lock()

    def _m(self, model: str) -> _Model:
        return self._models.setdefault(model, _Model())

    def started(self, model: str, input_tokens: int) -> bool:
        """Count a call about to be made; False (and nothing counted) when the model's RPM/TPM
        window has no room left for it."""
        if not self.rates.add(model, input_tokens, limits=self.limits.get(model)):
            return False
        with self._lock:
            self._m(model).in_flight += 1
        return True

    def window_wait_s(self, model: str, input_tokens: int) -> float:
        """How long until the model's own RPM/TPM window takes a request of this size."""
        limits = self.limits.get(model)
        return self.rates.wait_s(model, limits, input_tokens) if limits is not None else 0.0

    def hold(self, model: str) -> None:
        """Count a call as in flight without counting a new request (a stream past its first token)."""
        with self._lock:
            self._m(model).in_flight += 1

    def finished(self, model: str) -> None:
        with self._lock:
            m = self._m(model)
            m.in_flight = max(0, m.in_flight - 1)

    def succeeded(self, model: str, latency_s: float | None, ttft_s: float | None, output_tokens: int) -> None:
        self.breaker.success(model)
        if output_tokens:
            self.rates.add(model, output_tokens, request=False)
        with self._lock:
            m = self._m(model)
            if latency_s is not None:
                m.latency_s = _ewma(m.latency_s, latency_s)
            if ttft_s is not None:
                m.ttft_s = _ewma(m.ttft_s, ttft_s)
            m.error_rate = _ewma(m.error_rate, 0.0)

    def abandoned(self, model: str, claim: Claim, ttft_s: float, output_tokens: int) -> None:
        """A stream its client left after the first token: no verdict on the model and no
        latency sample, only the time to first token it showed."""
        self.breaker.release(model, claim)
        if output_tokens:
            self.rates.add(model, output_tokens, request=False)
        with self._lock:
            m = self._m(model)
            m.ttft_s = _ewma(m.ttft_s, ttft_s)

    def failed(self, model: str, claim: Claim, kind: str, retry_after_s: float | None = None,
               counts_against_model: bool = True) -> bool:
        """Record a failed attempt (an UpstreamError's `kind`); True when it opened the model's circuit."""
        if not counts_against_model:
            self.breaker.release(model, claim)
            return False
        with self._lock:
            m = self._m(model)
            m.error_rate = _ewma(m.error_rate, 1.0)
            m.last_failure = kind
        return self.breaker.failure(model, retry_after_s, kind == "rate_limit")

    def last_failure(self, model: str) -> str | None:
        with self._lock:
            return self._m(model).last_failure

    def stats(self, model: str, request_tokens: int = 0) -> LiveStats:
        with self._lock:
            m = self._m(model)
            latency, ttft, err, inflight = m.latency_s, m.ttft_s, m.error_rate, m.in_flight
        limits = self.limits.get(model)
        room = limits is None or self.rates.has_room(model, limits, request_tokens)
        return LiveStats(
            ewma_latency_s=latency,
            ewma_ttft_s=ttft,
            error_rate=err,
            in_flight=inflight,
            healthy=room and self.breaker.available(model),
        )

    def snapshot(self, request_tokens: int = 0) -> dict[str, LiveStats]:
        """Every model's live view for one decision (`request_tokens` checks the TPM headroom)."""
        return {name: self.stats(name, request_tokens) for name in list(self._models)}

    def describe(self) -> dict[str, dict]:
        """JSON view for /healthz."""
        out = {}
        for name in list(self._models):
            s = self.stats(name)
            requests, tokens = self.rates.usage(name)
            out[name] = {
                "healthy": s.healthy,
                "circuit": self.breaker.state(name),
                "ewma_latency_s": s.ewma_latency_s,
                "ewma_ttft_s": s.ewma_ttft_s,
                "error_rate": round(s.error_rate, 4),
                "in_flight": s.in_flight,
                "requests_last_min": requests,
                "tokens_last_min": tokens,
            }
        return out
