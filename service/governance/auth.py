"""Who is calling: the one place that checks client keys and the master key.

`Authenticator.identify` serves every client endpoint (chat through `GovernanceHook`,
`/v1/models`, `/v1/route`, `/v1/feedback`) so they refuse alike: 401 for a missing or unknown
key, 403 for a revoked or expired one, never echoing the presented secret. `require_admin`
guards every `/admin` endpoint and the dashboard's data: the master key as a Bearer token,
and without a master key no admin access at all. `require_metrics_token` guards `/metrics`
once `OPENCLAW_METRICS_TOKEN` is set.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from starlette.requests import Request

from router.store_errors import store_unreachable
from router.types import Constraints
from service.errors import ApiError
from service.governance.keys import VirtualKey

if TYPE_CHECKING:
    from service.governance.runtime import Governance

OPEN_MODE_TTL_S = 2.0
# Keys are cached this long per replica (changes made through this replica's admin API apply
# at once; other replicas see them within this delay).
CACHE_TTL_S = 1.0
CACHE_MAX = 10_000
DEFAULT_TENANT = "default"
MIN_MASTER_KEY_CHARS = 32

log = logging.getLogger(__name__)


def presented_secret(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return (headers.get("x-api-key") or "").strip() or None


def _same(secret: str, expected: str) -> bool:
    return hmac.compare_digest(secret.encode(), expected.encode())


def master_key(app_state: Any) -> str | None:
    """The governance master key, or `OPENCLAW_MASTER_KEY` (read now) when governance is off."""
    gov = getattr(app_state, "governance", None)
    if gov is not None:
        return gov.settings.master_key
    return master_key_from(os.environ)


def master_key_from(env: Mapping[str, str]) -> str | None:
    """OPENCLAW_MASTER_KEY without surrounding whitespace, as presented keys are read: a key
    mounted from a file (`kubectl create secret --from-file`) ends in a line break, and kept, it
    would refuse the right key forever."""
    return (env.get("OPENCLAW_MASTER_KEY") or "").strip() or None


def require_admin(request: Request) -> None:
    """The guard of every admin endpoint: the master key, presented as a client key is
    (`Authorization: Bearer <key>` or `x-api-key`). A refusal is counted with the client-key
    refusals (`openclaw_governance_refusals`) and logged, at most once a minute per client
    address, so guessing leaves a trace without flooding the log.

    Without a master key the admin endpoints are off (403), whatever the client's address:
    trusting loopback would make every client of a same-host reverse proxy an admin.
    """
    app_state, headers = request.app.state, request.headers
    client = request.client.host if request.client else None
    master = master_key(app_state)
    if master is None:
        raise ApiError(403, "The admin API is disabled: set OPENCLAW_MASTER_KEY to enable it.", code="admin_disabled")
    secret = presented_secret(headers)
    if secret is None:
        raise _admin_refusal(app_state, client, "admin_missing_key", "The admin API needs the master key as "
                             "'Authorization: Bearer <key>'.", "missing_api_key")
    if not _same(secret, master):
        raise _admin_refusal(app_state, client, "admin_invalid_key", "Incorrect master key provided.", "invalid_api_key")


def _admin_refusal(app_state: Any, client: str | None, reason: str, message: str, code: str) -> ApiError:
    gov = getattr(app_state, "governance", None)
    if gov is None:
        _UNGOVERNED_ADMIN_LOG.refused(client, reason)
        return ApiError(401, message, code=code)
    gov.auth.admin_log.refused(client, reason)
    return gov.auth.refuse(401, message, code, reason)


class RefusalLog:
    """A WARNING line per client address at most once per `every_s`, with how many refusals it
    kept quiet about since: one line for a guessing client, not one per guess."""

    MAX_ADDRESSES = 10_000

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}  # address: (when it was last logged, refused since)
        self._lock = threading.Lock()

    def refused(self, client: str | None, reason: str) -> None:
        address = client or "an unknown address"
        now = time.monotonic()
        with self._lock:
            logged, quiet = self._seen.get(address, (-math.inf, 0))
            if now - logged < self.every_s:
                self._seen[address] = (logged, quiet + 1)
                return
            if len(self._seen) >= self.MAX_ADDRESSES:  # many addresses: forget them rather than grow
                self._seen = {}
            self._seen[address] = (now, 0)
        since = f"; {quiet} more refused from there since its last such line" if quiet else ""
        log.warning("admin API: refused a request from %s (%s)%s", address, reason, since)


_UNGOVERNED_ADMIN_LOG = RefusalLog()  # a gateway without governance whose admin API has a master key


def metrics_token(app_state: Any) -> str | None:
    """The token `/metrics` requires, or `OPENCLAW_METRICS_TOKEN` (read now) when governance is off."""
    gov = getattr(app_state, "governance", None)
    if gov is not None:
        return gov.settings.metrics_token
    return metrics_token_from(os.environ)


def metrics_token_from(env: Mapping[str, str]) -> str | None:
    """OPENCLAW_METRICS_TOKEN without surrounding whitespace, as Prometheus trims a
    `credentials_file`: a token written to the file with a newline still matches."""
    return (env.get("OPENCLAW_METRICS_TOKEN") or "").strip() or None


def require_metrics_token(app_state: Any, headers: Mapping[str, str]) -> None:
    """`/metrics` labels every key's name, team, project and user tag with its spend: with a
    metrics token set, only a scraper that presents it (or the master key) reads them. Without
    one `/metrics` stays open, for deployments that keep it on a private network."""
    token = metrics_token(app_state)
    if token is None:
        return
    challenge = {"www-authenticate": 'Bearer realm="metrics"'}
    secret = presented_secret(headers)
    if secret is None:
        raise ApiError(401, "/metrics needs the metrics token as 'Authorization: Bearer <token>'.",
                       code="missing_api_key", headers=challenge)
    master = master_key(app_state)
    # Both compared whichever matches, so the time taken tells nothing about which one was close.
    matches = [_same(secret, token), master is not None and _same(secret, master)]
    if not any(matches):
        raise ApiError(401, "Incorrect metrics token provided.", code="invalid_api_key", headers=challenge)


@dataclass(frozen=True)
class Caller:
    """An authenticated client: `open` (no key configured), `master`, or a virtual `key`."""

    kind: str
    key: VirtualKey | None = None

    @property
    def tenant(self) -> str:
        return self.key.id if self.key is not None else DEFAULT_TENANT

    @property
    def label(self) -> str:
        return self.key.name if self.key is not None else self.kind

    def may_see(self, tenant: str | None) -> bool:
        """Whether this caller may act on a request logged under `tenant` (feedback)."""
        return self.key is None or tenant == self.key.id


OPEN = Caller("open")
MASTER = Caller("master")


class Authenticator:
    def __init__(self, gov: "Governance"):
        self.gov = gov
        self.admin_log = RefusalLog()
        master = gov.settings.master_key
        if master is not None and len(master) < MIN_MASTER_KEY_CHARS:
            log.warning("OPENCLAW_MASTER_KEY is %d characters long: the admin API takes unlimited guesses, so use at "
                        "least %d random characters (`openssl rand -hex 32` makes 64)", len(master), MIN_MASTER_KEY_CHARS)
        self._open: tuple[float, bool | None] = (0.0, None)  # (when asked, the answer); None: not asked yet
        self._keys: dict[str, tuple[float, VirtualKey, str]] = {}  # by secret hash: only known keys

    def invalidate(self) -> None:
        """Keys changed in this process: forget what is cached."""
        self._open = (0.0, None)
        self._keys = {}

    def refuse(self, status: int, message: str, code: str, reason: str,
               headers: dict[str, str] | None = None) -> ApiError:
        if self.gov.metrics is not None:
            self.gov.metrics.refusals.labels(reason).inc()
        return ApiError(status, message, code=code, headers=headers)

    def _lookup(self, secret: str) -> tuple[VirtualKey | None, str]:
        digest = self.gov.keys.hash(secret)
        hit = self._keys.get(digest)
        if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
            key, status = hit[1], hit[2]
        else:
            key, status = self.gov.keys.authenticate(secret)
            if key is not None:
                if len(self._keys) >= CACHE_MAX:
                    self._keys = {}
                self._keys[digest] = (time.monotonic(), key, status)
        # Expiry is checked against the clock on every request, cached or not.
        return (key, key.status()) if key is not None and status == "active" else (key, status)

    async def _open_mode(self) -> bool:
        checked_at, value = self._open
        if value is False:
            return False  # keys once made stay required (Governance.open_mode): never asked again
        if value is None or time.monotonic() - checked_at > OPEN_MODE_TTL_S:
            try:
                value = await asyncio.to_thread(self.gov.open_mode)
            except Exception as exc:
                if value is None or not store_unreachable(exc):
                    raise
                # The database away: open as it was, asked again after the TTL, rather than every
                # request of a keyless gateway failing with it.
            self._open = (time.monotonic(), value)
        return value

    async def identify(self, headers: Mapping[str, str]) -> Caller:
        secret = presented_secret(headers)
        master = self.gov.settings.master_key
        if secret is not None and master is not None and _same(secret, master):
            return MASTER
        if await self._open_mode():
            # SDKs always send some key; with no key configured anywhere, none is checked.
            return OPEN
        if secret is None:
            raise self.refuse(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                              "missing_api_key", "missing_key")
        key, status = await asyncio.to_thread(self._lookup, secret)
        if key is None:
            raise self.refuse(401, "Incorrect API key provided.", "invalid_api_key", "invalid_key")
        if status != "active":
            raise self.refuse(403, f"The API key '{key.name}' is {status}.", f"key_{status}", f"key_{status}")
        return Caller("key", key)

    def scope(self, key: VirtualKey | None, profile: str | None, requested_model: str,
              constraints: Constraints) -> Constraints:
        """The constraints narrowed to the key's scope; 403 when the request falls outside it."""
        if key is None:
            return constraints
        if profile is None:
            if not allows_model(key, requested_model):
                raise self.refuse(403, f"The key '{key.name}' may not use model '{requested_model}': it may use "
                                  f"{scope_text(key)}.", "model_not_allowed", "scope")
            if key.allowed_models is None:
                return constraints
            # The named model's fallbacks are filtered by these too: failing over must not leave the key's scope.
            allowed = set(key.allowed_models) & set(constraints.allowed_models or key.allowed_models)
            return dataclasses.replace(constraints, allowed_models=frozenset(allowed))
        if key.allowed_profiles is not None and profile not in key.allowed_profiles:
            raise self.refuse(403, f"The key '{key.name}' may not use routing profile '{profile}': it may use "
                              f"{scope_text(key)}.", "profile_not_allowed", "scope")
        if key.allowed_models is None:
            return constraints
        allowed = set(key.allowed_models)
        if constraints.allowed_models is not None:
            allowed &= set(constraints.allowed_models)
        if not allowed:
            raise self.refuse(403, f"None of the requested models is allowed for key '{key.name}'.",
                              "model_not_allowed", "scope")
        return dataclasses.replace(constraints, allowed_models=frozenset(allowed))


def allows_profile(key: VirtualKey | None, profile: str) -> bool:
    return key is None or key.allowed_profiles is None or profile in key.allowed_profiles


def allows_model(key: VirtualKey | None, model: str) -> bool:
    """Whether the key may name `model` (and see it in `/v1/models`). A key given only routing
    profiles may name none: the profiles are its whole scope, whichever model they route to."""
    if key is None:
        return True
    if key.allowed_models is None:
        return key.allowed_profiles is None
    return model in key.allowed_models


def routes_to(key: VirtualKey | None, model: str) -> bool:
    """Whether a routing profile may pick `model` for the key: any model, unless the key has
    `allowed_models`."""
    return key is None or key.allowed_models is None or model in key.allowed_models


def scope_text(key: VirtualKey) -> str:
    """What the key may use, for a 403: its models and routing profiles."""
    parts = []
    if key.allowed_models is not None:
        parts.append(f"the models {', '.join(key.allowed_models)}" if key.allowed_models else "no model by name")
    if key.allowed_profiles is not None:
        parts.append(f"the routing profiles {', '.join(key.allowed_profiles)}" if key.allowed_profiles
                     else "no routing profile")
    return " and ".join(parts) or "any model"


async def client_caller(app_state: Any, headers: Mapping[str, str]) -> Caller | None:
    """The caller of a client endpoint; None when the gateway runs without governance."""
    gov = getattr(app_state, "governance", None)
    return None if gov is None else await gov.auth.identify(headers)
