"""After a database restart, the pools' dead idle connections fail one request, not one each."""
from __future__ import annotations

import secrets
from contextlib import ExitStack

import psycopg
import pytest

from service.governance.db import PostgresDatabase


def _terminate(app: str) -> int:
    """What a server restart does to the pool's connections: each backend gone under it."""
    from tests.conftest import PG_BASE

    with psycopg.connect(PG_BASE, autocommit=True) as admin:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                             (app,)).fetchone()[0]


def test_a_restart_costs_the_governance_store_one_failed_request_not_one_per_pooled_connection(pg_url):
    app = "restart_" + secrets.token_hex(4)
    db = PostgresDatabase(f"{pg_url}&application_name={app}", max_size=4)
    try:
        with ExitStack() as held:  # four requests at once leave four idle connections in the pool
            for _ in range(4):
                held.enter_context(db.tx()).one("SELECT 1 AS one")
        assert _terminate(app) == 4
        with pytest.raises(psycopg.OperationalError):
            with db.tx() as tx:
                tx.one("SELECT 1 AS one")
        for _ in range(4):  # the three other dead connections were checked out of the pool with the first
            with db.tx() as tx:
                assert tx.one("SELECT 1 AS one")["one"] == 1
    finally:
        db.close()
