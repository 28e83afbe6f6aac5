"""A router promoted on one replica (`POST /admin/router/reload`, as `retrain --gateway` sends it
through a load balancer) is served by every replica sharing Redis, including one started later.
Real Redis, real gateways on 127.0.0.1, the shipped router artifact."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "default"
MASTER = "mk-follow-test"


def serving(gw: Running) -> str | None:
    path = getattr(gw.gateway.router.current, "path", None)
    return str(Path(path).resolve()) if path is not None else None


def test_replicas_follow_a_promotion_and_a_late_replica_starts_on_it(tmp_path, redis_url, monkeypatch):
    url, prefix = redis_url
    monkeypatch.setenv("OPENCLAW_REDIS_PREFIX", prefix)
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", MASTER)
    promoted = tmp_path / "promoted"
    shutil.copytree(SHIPPED, promoted)
    with FakeUpstream() as up:
        config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite")
        config = config.model_copy(update={"server": config.server.model_copy(update={"redis_url": url})})
        a, b = Running(config, router=QualityRouter(DEFAULT_QUALITY)), Running(config, router=QualityRouter(DEFAULT_QUALITY))
        late = None
        try:
            assert serving(a) is None and serving(b) is None  # the test routers have no artifact path
            r = httpx.post(f"{a.url}/admin/router/reload", json={"path": str(promoted)},
                           headers={"authorization": f"Bearer {MASTER}"}, timeout=60)
            assert r.status_code == 200 and r.json()["replicas_follow"] is True
            assert serving(a) == str(promoted.resolve())
            deadline = time.monotonic() + 10
            while serving(b) != str(promoted.resolve()):
                assert time.monotonic() < deadline, "replica b never followed the promotion"
                time.sleep(0.05)
            late = Running(config, router=QualityRouter(DEFAULT_QUALITY))
            assert serving(late) == str(promoted.resolve())  # from its first request on

            # A promoted path this replica cannot read: logged, skipped, the current router stays.
            follower = b.app.state.router_follower
            follower.r.set(follower.key, json.dumps({"path": str(tmp_path / "gone"), "at": time.time()}))
            assert follower.follow_once() is False
            assert serving(b) == str(promoted.resolve())
        finally:
            for gw in (a, b, late):
                if gw is not None:
                    gw.stop()
