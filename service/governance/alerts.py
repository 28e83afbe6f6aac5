"""Alerts: budget thresholds, error-rate spikes, circuits opening → webhook POST and the log.

Each alert condition has a dedupe key; it fires when the condition becomes true and is
re-armed only when it clears (error rate back down, circuit closed) or, for budgets, when a
new period window starts. The "already fired" state is a row in the governance database,
updated atomically, so replicas sharing that database deliver each crossing once.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from service.governance.budgets import Line, Usage
from service.governance.db import Database

log = logging.getLogger("openclaw.alerts")


@dataclass(frozen=True)
class Alert:
    kind: str  # budget | error_rate | circuit_open
    dedupe: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        return {"source": "openclaw-router", **asdict(self), "details": dict(self.details)}


class Alerter:
    def __init__(self, db: Database, webhook_url: str | None = None, thresholds: Sequence[float] = (0.5, 0.8, 1.0),
                 error_rate: float = 0.5, error_window: int = 20, error_min_requests: int = 10):
        self.db = db
        self.webhook_url = webhook_url
        self.thresholds = tuple(sorted(thresholds))
        self.error_rate = error_rate
        self.error_min_requests = error_min_requests
        self._outcomes: dict[str, deque] = defaultdict(lambda: deque(maxlen=error_window))
        # Conditions this replica has cleared since it last saw them true: a healthy request must
        # not cost a database write, and a replica that never saw a spike clears another's alert
        # once (after a restart, say) instead of on every request while that one still spikes.
        self._cleared: set[str] = set()
        self._client: Any = None

    def fire_once(self, alert: Alert) -> bool:
        """Mark the alert active; True only for the caller that flipped it (deliver then)."""
        with self.db.tx() as tx:
            cur = tx.execute(
                "INSERT INTO gov_alerts (dedupe, kind, active, message, fired_at) VALUES (?, ?, 1, ?, ?) "
                "ON CONFLICT (dedupe) DO NOTHING",
                (alert.dedupe, alert.kind, alert.message, alert.ts),
            )
            if cur.rowcount == 1:
                return True
            cur = tx.execute(
                "UPDATE gov_alerts SET active = 1, message = ?, fired_at = ?, fired_count = fired_count + 1 "
                "WHERE dedupe = ? AND active = 0",
                (alert.message, alert.ts, alert.dedupe),
            )
            return cur.rowcount == 1

    def clear(self, dedupe: str) -> None:
        if dedupe in self._cleared:
            return
        with self.db.tx() as tx:
            tx.execute("UPDATE gov_alerts SET active = 0 WHERE dedupe = ? AND active = 1", (dedupe,))
        self._cleared.add(dedupe)

    def _condition(self, alert: Alert) -> list[Alert]:
        self._cleared.discard(alert.dedupe)
        return [alert] if self.fire_once(alert) else []

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.db.tx() as tx:
            return tx.all("SELECT * FROM gov_alerts ORDER BY fired_at DESC LIMIT ?", (limit,))

    def budget_alerts(self, lines: Iterable[Line], usage: Mapping[str, Usage]) -> list[Alert]:
        """The highest budget threshold settled spend has reached, if it has not fired in this
        window. One settle that jumps several thresholds (a large request, a lowered limit) says
        where the budget is now, once: the lower ones it passed are not sent after it, nor later."""
        fired = []
        for line in lines:
            if line.limit_nusd <= 0 or line.counter not in usage:
                continue
            share = usage[line.counter].spent_nusd / line.limit_nusd
            t = max((t for t in self.thresholds if share >= t), default=None)
            if t is None:
                continue
            alert = Alert(
                "budget", f"{line.counter}:{t:g}",
                f"{line.label} has reached {share:.0%} of ${line.limit_nusd / 1e9:.4f} (threshold {t:.0%})",
                {"budget_id": line.budget_id, "counter": line.counter, "threshold": t, "share": round(share, 4),
                 "spent_usd": usage[line.counter].spent_nusd / 1e9, "limit_usd": line.limit_nusd / 1e9},
            )
            if self.fire_once(alert):
                fired.append(alert)
        return fired

    def request_outcome(self, model: str, failed: bool) -> list[Alert]:
        """Track a model's recent error rate; alert when it spikes, re-arm when it recovers."""
        window = self._outcomes[model]
        window.append(failed)
        rate = sum(window) / len(window)
        dedupe = f"error_rate:{model}"
        if len(window) >= self.error_min_requests and rate >= self.error_rate:
            return self._condition(Alert("error_rate", dedupe, f"model {model} error rate is {rate:.0%} over the last {len(window)} requests",
                                         {"model": model, "error_rate": round(rate, 4), "window": len(window)}))
        if rate < self.error_rate / 2:
            self.clear(dedupe)
        return []

    def circuit_state(self, model: str, state: str, cause: str | None = None) -> list[Alert]:
        """`cause`: the last error that opened it, so the alert says what to fix (a refused key)."""
        dedupe = f"circuit:{model}"
        if state == "open":
            why = f"; last error: {cause}" if cause else ""
            return self._condition(Alert("circuit_open", dedupe, f"the circuit of model {model} opened: the router stops sending it "
                                         f"traffic{why}", {"model": model, "cause": cause}))
        if state == "closed":
            self.clear(dedupe)
        return []

    async def deliver(self, alerts: Sequence[Alert]) -> None:
        """Log every alert, then POST each to the webhook (a failed POST is logged, not retried forever)."""
        for alert in alerts:
            log.warning("ALERT %s: %s", alert.kind, alert.message)
        if not alerts or not self.webhook_url:
            return
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0)
        for alert in alerts:
            for attempt in range(2):
                try:
                    resp = await self._client.post(self.webhook_url, json=alert.payload())
                    if resp.status_code < 500:
                        break
                except httpx.HTTPError as exc:
                    if attempt == 1:
                        log.error("alert webhook failed for %s: %s", alert.dedupe, type(exc).__name__)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
