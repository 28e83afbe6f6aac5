"""Virtual client keys: create, list, update, revoke, rotate, authenticate.

A secret is shown once, at creation or rotation, and only its HMAC-SHA256 under a server
pepper is stored: a leaked database does not yield usable keys, and the pepper lives in the
environment (`OPENCLAW_KEY_PEPPER`) or, by default, in the store itself so that every
replica sharing the database agrees on it. Secrets are high-entropy random strings, so a
fast keyed hash is enough (scrypt only pays off for low-entropy passwords).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from service.governance.db import Database

SECRET_PREFIX = "sk-ocr-"
USD_NANO = 1_000_000_000


def to_nusd(usd: float | None) -> int | None:
    return None if usd is None else int(round(usd * USD_NANO))


def to_usd(nusd: int | None) -> float | None:
    return None if nusd is None else nusd / USD_NANO


@dataclass(frozen=True)
class VirtualKey:
    """A key as the admin API shows it: never the secret, only its first characters."""

    id: str
    name: str
    prefix: str
    team: str | None = None
    project: str | None = None
    user: str | None = None
    allowed_models: tuple[str, ...] | None = None
    allowed_profiles: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel_requests: int | None = None
    max_request_usd: float | None = None
    max_session_usd: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    revoked_at: float | None = None

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def budget_label(self, period: str) -> str:
        """A budget of this key as a 402 and an alert name it: by the key's name, which a reader
        knows, and its id (names need not be unique)."""
        return f"{period} budget of key '{self.name}' ({self.id})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["allowed_models"] = list(self.allowed_models) if self.allowed_models is not None else None
        d["allowed_profiles"] = list(self.allowed_profiles) if self.allowed_profiles is not None else None
        d["metadata"] = dict(self.metadata)
        d["status"] = self.status()
        return d


# Fields an admin may set at creation or change later, with their column names.
_EDITABLE = {
    "name": "name",
    "team": "team",
    "project": "project",
    "user": "user_tag",
    "allowed_models": "allowed_models",
    "allowed_profiles": "allowed_profiles",
    "rpm": "rpm",
    "tpm": "tpm",
    "max_parallel_requests": "max_parallel_requests",
    "max_request_usd": "max_request_nusd",
    "max_session_usd": "max_session_nusd",
    "metadata": "metadata",
    "expires_at": "expires_at",
}


def _encode(field_name: str, value: Any) -> Any:
    if field_name in ("allowed_models", "allowed_profiles"):
        return None if value is None else json.dumps(sorted(set(value)))
    if field_name == "metadata":
        return json.dumps(dict(value or {}), sort_keys=True)
    if field_name in ("max_request_usd", "max_session_usd"):
        return to_nusd(value)
    return value


def _row_to_key(row: Mapping[str, Any]) -> VirtualKey:
    def names(v: str | None) -> tuple[str, ...] | None:
        return None if v is None else tuple(json.loads(v))

    return VirtualKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        team=row["team"],
        project=row["project"],
        user=row["user_tag"],
        allowed_models=names(row["allowed_models"]),
        allowed_profiles=names(row["allowed_profiles"]),
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_parallel_requests=row["max_parallel_requests"],
        max_request_usd=to_usd(row["max_request_nusd"]),
        max_session_usd=to_usd(row["max_session_nusd"]),
        metadata=json.loads(row["metadata"] or "{}"),
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        revoked_at=row["revoked_at"],
    )


class UnknownKey(LookupError):
    """No key with that id."""


class KeyStore:
    def __init__(self, db: Database, pepper: str | None = None):
        self.db = db
        self._pepper = (pepper or os.environ.get("OPENCLAW_KEY_PEPPER") or self._stored_pepper()).encode()

    def _stored_pepper(self) -> str:
        # Replicas starting together on a new database: an insert yields to one already made, and
        # all read the one pepper. A read then an insert, unlocked on PostgreSQL, had the second
        # replica die on the primary key.
        with self.db.tx(immediate=True) as tx:
            tx.execute("INSERT INTO gov_settings (name, value) VALUES ('key_pepper', ?) ON CONFLICT (name) DO NOTHING",
                       (secrets.token_hex(32),))
            return tx.one("SELECT value FROM gov_settings WHERE name = 'key_pepper'")["value"]

    def hash(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _new_secret() -> str:
        return SECRET_PREFIX + secrets.token_urlsafe(32)

    def create(self, name: str, *, now: float | None = None, **fields: Any) -> tuple[VirtualKey, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again."""
        unknown = set(fields) - set(_EDITABLE)
        if unknown:
            raise ValueError(f"unknown key fields: {sorted(unknown)}")
        now = time.time() if now is None else now
        key_id = "key_" + secrets.token_hex(8)
        secret = self._new_secret()
        values = {"name": name, **fields}
        cols = ["id", "prefix", "created_at", "updated_at"] + [_EDITABLE[f] for f in values]
        params = [key_id, secret[: len(SECRET_PREFIX) + 4], now, now] + [_encode(f, v) for f, v in values.items()]
        with self.db.tx() as tx:
            tx.execute(
                f"INSERT INTO gov_keys ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", params
            )
            tx.execute(
                "INSERT INTO gov_key_secrets (hash, key_id, created_at, valid_until) VALUES (?, ?, ?, NULL)",
                (self.hash(secret), key_id, now),
            )
        return self.get(key_id), secret

    def get(self, key_id: str) -> VirtualKey:
        with self.db.tx() as tx:
            row = tx.one("SELECT * FROM gov_keys WHERE id = ?", (key_id,))
        if row is None:
            raise UnknownKey(key_id)
        return _row_to_key(row)

    def list(self, include_revoked: bool = True) -> list[VirtualKey]:
        sql = "SELECT * FROM gov_keys" + ("" if include_revoked else " WHERE revoked_at IS NULL") + " ORDER BY created_at"
        with self.db.tx() as tx:
            return [_row_to_key(r) for r in tx.all(sql)]

    def any_created(self) -> bool:
        """Whether a key was ever made (revoked and expired ones included)."""
        with self.db.tx() as tx:
            return tx.one("SELECT 1 AS one FROM gov_keys LIMIT 1") is not None

    def update(self, key_id: str, *, now: float | None = None, **fields: Any) -> VirtualKey:
        unknown = set(fields) - set(_EDITABLE)
        if unknown:
            raise ValueError(f"unknown key fields: {sorted(unknown)}")
        self.get(key_id)
        if fields:
            now = time.time() if now is None else now
            sets = ", ".join(f"{_EDITABLE[f]} = ?" for f in fields) + ", updated_at = ?"
            params = [_encode(f, v) for f, v in fields.items()] + [now, key_id]
            with self.db.tx() as tx:
                tx.execute(f"UPDATE gov_keys SET {sets} WHERE id = ?", params)
        return self.get(key_id)

    def revoke(self, key_id: str, now: float | None = None) -> VirtualKey:
        now = time.time() if now is None else now
        self.get(key_id)
        with self.db.tx() as tx:
            # The secret rows stay so that a revoked key is told "revoked" (403), not "unknown" (401).
            tx.execute("UPDATE gov_keys SET revoked_at = ?, updated_at = ? WHERE id = ? AND revoked_at IS NULL", (now, now, key_id))
        return self.get(key_id)

    def rotate(self, key_id: str, grace_s: float = 0.0, now: float | None = None) -> tuple[VirtualKey, str]:
        """A new secret for the same key (budgets and attribution carry over).

        The old secret stops working at once, or after `grace_s` seconds so that clients can
        be redeployed without an outage.
        """
        now = time.time() if now is None else now
        self.get(key_id)  # an unknown key: its 404
        secret = self._new_secret()
        with self.db.tx(immediate=True) as tx:
            # The key's row locked first: rotations running at once on PostgreSQL had each deleted the
            # secrets it saw, not the others' new ones, and left several valid with no end.
            lock = " FOR UPDATE" if tx.dialect == "postgres" else ""
            if _row_to_key(tx.one(f"SELECT * FROM gov_keys WHERE id = ?{lock}", (key_id,))).status(now) == "revoked":
                raise ValueError(f"key {key_id} is revoked and cannot be rotated")
            if grace_s > 0:
                tx.execute(
                    "UPDATE gov_key_secrets SET valid_until = ? WHERE key_id = ? AND (valid_until IS NULL OR valid_until > ?)",
                    (now + grace_s, key_id, now + grace_s),
                )
            else:
                tx.execute("DELETE FROM gov_key_secrets WHERE key_id = ?", (key_id,))
            tx.execute(
                "INSERT INTO gov_key_secrets (hash, key_id, created_at, valid_until) VALUES (?, ?, ?, NULL)",
                (self.hash(secret), key_id, now),
            )
            tx.execute(
                "UPDATE gov_keys SET prefix = ?, updated_at = ? WHERE id = ?",
                (secret[: len(SECRET_PREFIX) + 4], now, key_id),
            )
            # Read in the same transaction: after it, another rotation may have named its own prefix.
            rotated = _row_to_key(tx.one("SELECT * FROM gov_keys WHERE id = ?", (key_id,)))
        return rotated, secret

    def team_limits(self) -> list[dict[str, Any]]:
        """The limits set on teams (the `team` keys carry): `max_parallel_requests` holds every
        key of the team together, beside each key's own."""
        with self.db.tx() as tx:
            return tx.all("SELECT team, max_parallel_requests, updated_at FROM gov_teams ORDER BY team")

    def team_parallel(self, team: str) -> int | None:
        with self.db.tx() as tx:
            row = tx.one("SELECT max_parallel_requests FROM gov_teams WHERE team = ?", (team,))
        return None if row is None else row["max_parallel_requests"]

    def set_team_parallel(self, team: str, limit: int | None, now: float | None = None) -> dict[str, Any]:
        """Set a team's `max_parallel_requests`; None removes it (no cap on the team as a whole)."""
        now = time.time() if now is None else now
        with self.db.tx() as tx:
            if limit is None:
                tx.execute("DELETE FROM gov_teams WHERE team = ?", (team,))
            else:  # one statement: a delete then an insert made concurrent PUTs on PostgreSQL a 409
                tx.execute("INSERT INTO gov_teams (team, max_parallel_requests, updated_at) VALUES (?, ?, ?) ON CONFLICT (team) "
                           "DO UPDATE SET max_parallel_requests = excluded.max_parallel_requests, updated_at = excluded.updated_at",
                           (team, limit, now))
        return {"team": team, "max_parallel_requests": limit, "updated_at": now}

    def authenticate(self, secret: str, now: float | None = None) -> tuple[VirtualKey | None, str]:
        """(key, "active") for a valid secret, else (key or None, why not: unknown/revoked/expired)."""
        now = time.time() if now is None else now
        with self.db.tx() as tx:
            row = tx.one(
                "SELECT k.*, s.valid_until AS secret_valid_until FROM gov_key_secrets s "
                "JOIN gov_keys k ON k.id = s.key_id WHERE s.hash = ?",
                (self.hash(secret),),
            )
        if row is None:
            return None, "unknown"
        if row["secret_valid_until"] is not None and now >= row["secret_valid_until"]:
            return None, "unknown"
        key = _row_to_key(row)
        return key, key.status(now)
