"""Shared fixtures: real PostgreSQL and Redis on 127.0.0.1 when they run.

In CI (`CI=true`) a missing service is a failure, never a skip. Each test gets its own
PostgreSQL schema and Redis key prefix, so concurrent runs (and pytest-xdist's workers, which
`python -m pytest` starts) never see each other's rows.
"""
from __future__ import annotations

import os
import secrets

import pytest


def pytest_xdist_auto_num_workers(config):
    """The suite mostly waits (on sockets, subprocesses and timers), not on the CPU: two workers
    halve it on CI's two cores. More than 8 would each load the models for little gain."""
    return max(2, min(len(os.sched_getaffinity(0)), 8))


PG_BASE = os.environ.get("OPENCLAW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("OPENCLAW_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(f"{message}; start it to run this test")


def require_dataset(path) -> None:
    """The shared data a test reads (`OPENCLAW_DATASETS`, default ../shared/datasets): a skip on a
    machine without it, a failure in CI, which must provide it."""
    from pathlib import Path

    if not Path(path).exists():
        message = f"shared dataset {path} is missing (OPENCLAW_DATASETS)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must provide it")
        pytest.skip(message)


@pytest.fixture
def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    try:
        import psycopg

        conn = psycopg.connect(PG_BASE, autocommit=True, connect_timeout=3)
    except Exception as exc:
        _unavailable(f"PostgreSQL at {PG_BASE}", exc)
    schema = "t_" + secrets.token_hex(6)
    conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_BASE else "?"
    yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@pytest.fixture
def redis_url():
    """(url, prefix): a live Redis and a key prefix of this test's own, cleaned afterwards."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_BASE, socket_connect_timeout=3)
        client.ping()
    except Exception as exc:
        _unavailable(f"Redis at {REDIS_BASE}", exc)
    prefix = "test-" + secrets.token_hex(6)
    yield REDIS_BASE, prefix
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """tests/routerbench_worlds.py's retrain world (two trained routers, a logged exploring policy
    with feedback), built once however many modules use it. Its tests only read it; what they
    write goes to their own folders, or beside it under `world.root` (tests/test_retrain.py)."""
    from tests.routerbench_worlds import TABLE, retrain_world

    require_dataset(TABLE)
    return retrain_world(tmp_path_factory.mktemp("retrain"))


@pytest.fixture(scope="session")
def shadow_artifact(tmp_path_factory):
    """tests/routerbench_worlds.py's shadow router artifact, trained once per session; only loaded."""
    from tests.routerbench_worlds import TABLE, train_shadow_router

    require_dataset(TABLE)
    return train_shadow_router(tmp_path_factory.mktemp("shadow"))


@pytest.fixture(scope="module")
def upstream():
    """A scriptable fake OpenAI-compatible upstream on 127.0.0.1, shared by a test module."""
    from tests.fake_upstream import FakeUpstream

    with FakeUpstream() as up:
        yield up


@pytest.fixture
def start_gateway(upstream, tmp_path):
    """Starts gateways over the module's fake upstream (tests/gateway_harness.py: `fake_config`,
    a `QualityRouter` with fixed qualities) and stops them after the test."""
    from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

    upstream.reset()
    running = []

    def _start(models=None, quality=DEFAULT_QUALITY, **kwargs):
        config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", models=models, **kwargs)
        gw = Running(config, router=QualityRouter(quality))
        running.append(gw)
        return gw

    yield _start
    for gw in running:
        gw.stop()


@pytest.fixture
def env(tmp_path):
    """A gateway with governance on (tests/governance_harness.py): (gateway, admin client,
    governance, upstream, webhook)."""
    from tests.governance_harness import governed_gateway

    with governed_gateway(tmp_path) as parts:
        yield parts
