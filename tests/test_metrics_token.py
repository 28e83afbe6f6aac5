"""`/metrics` behind OPENCLAW_METRICS_TOKEN: a Prometheus bearer token (or the master key) once
set, open as before when not — through running gateways and real HTTP."""
from __future__ import annotations

import httpx
import pytest

from service.governance import auth
from service.governance.runtime import Governance, GovernanceSettings
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

MASTER = "mk-metrics-" + "5" * 24
TOKEN = "mt-" + "3" * 32


@pytest.fixture
def locked(upstream, tmp_path):
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite")
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=MASTER,
                                                metrics_token=TOKEN))
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    yield gw
    gw.stop()


def _scrape(gw: Running, method: str = "GET", **headers: str) -> httpx.Response:
    return httpx.request(method, f"{gw.url}/metrics", headers=headers, timeout=10)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_set_token_is_required_and_refusals_are_openai_shaped(locked, method):
    for headers, code in (({}, "missing_api_key"),
                          ({"authorization": "Bearer wrong"}, "invalid_api_key"),
                          ({"authorization": f"Bearer {TOKEN}x"}, "invalid_api_key"),
                          ({"authorization": f"Basic {TOKEN}"}, "missing_api_key")):
        r = _scrape(locked, method, **headers)
        assert r.status_code == 401, (headers, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer")
        if method == "GET":
            error = r.json()["error"]
            assert error["code"] == code and error["type"] == "authentication_error" and error["message"]
            assert TOKEN not in r.text
    for secret in (TOKEN, MASTER):
        ok = _scrape(locked, method, authorization=f"Bearer {secret}")
        assert ok.status_code == 200, secret
        assert ok.headers["content-type"].startswith("text/plain")
        if method == "GET":
            assert "openclaw_" in ok.text


def test_a_virtual_key_does_not_open_metrics(locked):
    admin = httpx.Client(base_url=locked.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    secret = admin.post("/admin/keys", json={"name": "client"}).json()["secret"]
    admin.close()
    assert _scrape(locked, authorization=f"Bearer {secret}").status_code == 401


def test_the_environment_sets_it_with_governance_on_or_off(upstream, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENCLAW_MASTER_KEY", raising=False)
    monkeypatch.delenv("OPENCLAW_GOVERNANCE_DB", raising=False)
    monkeypatch.setenv("OPENCLAW_METRICS_TOKEN", f"  {TOKEN}\n")  # as a file's newline or `$(cat file)` leaves it
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite")
    governed = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=Governance.from_config(config))
    bare = Running(config, router=QualityRouter(DEFAULT_QUALITY))  # governance off: read per request
    try:
        for gw in (governed, bare):
            assert _scrape(gw).status_code == 401
            assert _scrape(gw, "HEAD", authorization=f"Bearer {TOKEN}").status_code == 200
            assert httpx.get(f"{gw.url}/healthz", timeout=10).status_code == 200  # probes send no credentials
        monkeypatch.delenv("OPENCLAW_METRICS_TOKEN")
        assert _scrape(bare).status_code == 200
        assert GovernanceSettings.from_env(config).metrics_token is None
    finally:
        governed.stop()
        bare.stop()


def test_tokens_are_compared_in_constant_time(monkeypatch):
    compared = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)

    class State:
        governance = None

    monkeypatch.setenv("OPENCLAW_METRICS_TOKEN", TOKEN)
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", MASTER)
    auth.require_metrics_token(State(), {"authorization": f"Bearer {TOKEN}"})
    # Both candidates are compared even when the first matches: timing tells nothing either way.
    assert {b for _, b in compared} == {TOKEN.encode(), MASTER.encode()}
