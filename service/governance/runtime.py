"""Everything governance holds for one gateway, built from the config and the environment.

Environment (never the config file, so secrets stay out of files under version control):
  OPENCLAW_MASTER_KEY        admin API, dashboard; also accepted as a client key
  OPENCLAW_METRICS_TOKEN     bearer token `/metrics` requires (the master key works too); unset: open
  OPENCLAW_GOVERNANCE_DB     keys/budgets/spend database URL (default: `server.db`)
  OPENCLAW_KEY_PEPPER        HMAC pepper for key hashes (default: generated, kept in the database)
  OPENCLAW_REDIS_PREFIX      key prefix in `server.redis_url` (default `openclaw`)
  OPENCLAW_ALERT_WEBHOOK     URL that receives alerts as JSON POSTs
  OPENCLAW_ALERT_THRESHOLDS  budget shares that alert, default `0.5,0.8,1.0`
"""
from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from router.config import Config
from service.governance.alerts import Alerter
from service.governance.attribution import Attribution, SpendMetrics
from service.governance.auth import Authenticator, master_key_from, metrics_token_from
from service.governance.budgets import BudgetStore, Ledger, SqlLedger
from router.store_errors import redact_url
from service.governance.db import Database, open_database
from service.governance.keys import KeyStore
from service.governance.ratelimit import MemoryRateLimiter

log = logging.getLogger(__name__)


@dataclass
class GovernanceSettings:
    db_url: str
    master_key: str | None = None
    metrics_token: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "openclaw"
    webhook_url: str | None = None
    thresholds: tuple[float, ...] = (0.5, 0.8, 1.0)
    stale_reservation_s: float = 900.0  # longer than any request may take

    @classmethod
    def from_env(cls, config: Config) -> "GovernanceSettings":
        env = os.environ
        return cls(
            db_url=env.get("OPENCLAW_GOVERNANCE_DB") or config.server.db,
            master_key=master_key_from(env),
            metrics_token=metrics_token_from(env),
            redis_url=config.server.redis_url,
            redis_prefix=env.get("OPENCLAW_REDIS_PREFIX", "openclaw"),
            webhook_url=_webhook(env.get("OPENCLAW_ALERT_WEBHOOK")),
            thresholds=_thresholds(env.get("OPENCLAW_ALERT_THRESHOLDS", "0.5,0.8,1.0")),
        )


def _thresholds(text: str) -> tuple[float, ...]:
    """OPENCLAW_ALERT_THRESHOLDS: budget shares in (0, 1], "0.5,0.8,1.0". A share written as a
    percentage ("80%", 80) would never alert (a budget stops spend at 1), so it is an error naming
    the variable."""
    shares = []
    for part in (p.strip() for p in text.split(",") if text.strip()):  # empty: no budget alerts
        try:
            share = float(part)
        except ValueError:
            share = float("nan")
        if not 0.0 < share <= 1.0:  # NaN too
            raise ValueError(f"OPENCLAW_ALERT_THRESHOLDS={text!r}: {part!r} is not a budget share; write shares of the "
                             "budget between 0 and 1, separated by commas, e.g. 0.5,0.8,1.0")
        shares.append(share)
    return tuple(sorted(set(shares)))


def _webhook(url: str | None) -> str | None:
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"OPENCLAW_ALERT_WEBHOOK={url!r} is not an http:// or https:// URL")
    return url


class Governance:
    def __init__(self, config: Config, settings: GovernanceSettings, db: Database | None = None):
        self.config = config
        self.settings = settings
        self.db = db or open_database(settings.db_url)
        self.keys = KeyStore(self.db)
        self.budgets = BudgetStore(self.db)
        self.redis: Any = None
        self.ledger: Ledger
        if settings.redis_url:
            from service.governance.redis_state import RedisLedger, RedisRateLimiter, connect

            self.redis = connect(settings.redis_url, check=True)
            self.ledger = RedisLedger(self.redis, self.db, prefix=settings.redis_prefix)
            self.limiter: Any = RedisRateLimiter(self.redis, prefix=settings.redis_prefix)
        else:
            self.ledger = SqlLedger(self.db)
            self.limiter = MemoryRateLimiter()
            if self.db.dialect == "sqlite":
                # A SQLite ledger is on one host, where a reservation's owner can be checked: one
                # whose process died before settling need not hold the budget for 15 minutes, while
                # a gateway still draining beside this one (a restart that overlaps) keeps its own.
                released = self.ledger.release_orphans()
                if released:
                    log.warning("governance: released %d budget reservations left by a process that ended "
                                "without settling them", released)
        self.alerts = Alerter(self.db, settings.webhook_url, settings.thresholds)
        self.attribution = Attribution(self.db)
        self.metrics: SpendMetrics | None = None
        self.auth = Authenticator(self)
        self.breaker: Any = None  # the gateway's circuit breaker, once attached
        self._last_sweep = 0.0
        log.info(
            "governance: store %s, shared state %s", redact_url(settings.db_url),
            f"Redis ({redact_url(settings.redis_url)})" if settings.redis_url else "in this process (no redis_url)",
        )

    @classmethod
    def from_config(cls, config: Config) -> "Governance":
        return cls(config, GovernanceSettings.from_env(config))

    def open_mode(self) -> bool:
        """No master key and no key ever made: requests need no key (embedded default, loopback
        only). Once keys exist, keys stay required even when the last one expires or is revoked:
        a gateway that checked keys when it started must not open up while it runs."""
        return self.settings.master_key is None and not self.keys.any_created()

    def startup_check(self, host: str) -> str:
        """The start-up line about authentication; refuses an open gateway on a non-loopback host."""
        if not self.open_mode():
            return "governance: client keys required (virtual keys or the master key)"
        if not is_loopback(host):
            raise ValueError(
                f"refusing to serve on {host} without any key: create a virtual key or set OPENCLAW_MASTER_KEY, "
                "or bind to 127.0.0.1"
            )
        return (f"governance: no keys configured — the gateway is OPEN (no authentication) and listens on {host} only; "
                "set OPENCLAW_MASTER_KEY and create virtual keys to require them; "
                "the /ui dashboard and the /admin API need OPENCLAW_MASTER_KEY too (off until it is set)")

    def attach(self, gateway: Any) -> None:
        """Plug into a built gateway: spend metrics on its registry, shared circuit breakers."""
        self.metrics = SpendMetrics(gateway.metrics.registry)
        if self.redis is not None:
            from service.breaker import probe_lapse_s
            from service.governance.redis_breaker import BREAKER_TIMEOUT_S, RedisCircuitBreaker
            from service.governance.redis_state import connect

            rel = self.config.reliability
            # A client of its own with short timeouts: the breaker and the models' own rate windows
            # are asked on the event loop.
            quick = connect(self.settings.redis_url, timeout_s=BREAKER_TIMEOUT_S)
            gateway.live.breaker = RedisCircuitBreaker(
                quick, rel.breaker_failures, rel.breaker_cooldown_s, prefix=self.settings.redis_prefix,
                probe_lapse_s=probe_lapse_s(self.config),
            )
            if any(m.limits is not None and (m.limits.rpm or m.limits.tpm) for m in self.config.models):
                from service.shared_rates import SharedRateWindow

                gateway.live.rates = SharedRateWindow(quick, gateway.live.limits, prefix=self.settings.redis_prefix)
        self.breaker = gateway.live.breaker

    def maybe_sweep(self) -> None:
        """Release reservations of requests that died before settling (at most once a minute)."""
        now = time.time()
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        released = self.ledger.release_stale(self.settings.stale_reservation_s, now)
        if isinstance(self.ledger, SqlLedger) and self.db.dialect == "sqlite":
            released += self.ledger.release_orphans()
        if released:
            log.warning("governance: released %d stale budget reservations", released)

    def close(self) -> None:
        self.db.close()
        if self.redis is not None:
            self.redis.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
