"""The /ui dashboard on the open demo gateway (no OPENCLAW_MASTER_KEY), in headless Chromium: the
page finds on load that the admin API is off and says what to set instead of asking for a master
key that does not exist; with a master key it still asks for it. `serve`'s open-mode warning says
the same."""
from __future__ import annotations

import re

from service.governance.runtime import Governance, GovernanceSettings
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config
from tests.governance_harness import MODELS
from tests.test_dashboard import _chromium, _run_chromium


def _tag(dom: str, element_id: str) -> str:
    m = re.search(rf'<[a-z]+ id="{element_id}"[^>]*>', dom)
    assert m, f"#{element_id} not in the rendered page"
    return m.group(0)


def _section(dom: str, element_id: str) -> str:
    m = re.search(rf'<section id="{element_id}".*?</section>', dom, re.S)
    assert m, f"#{element_id} not in the rendered page"
    return re.sub(r"<[^>]+>", "", m.group(0))


def test_open_gateway_dashboard_says_the_master_key_is_not_set(tmp_path, monkeypatch):
    binary = _chromium()
    monkeypatch.delenv("OPENCLAW_MASTER_KEY", raising=False)
    up = FakeUpstream().start()
    try:
        config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=MODELS)
        gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/g.sqlite"))
        assert gov.open_mode()
        notice = gov.startup_check("127.0.0.1")
        assert "/ui" in notice and "/admin" in notice and notice.count("OPENCLAW_MASTER_KEY") >= 2
        gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
        try:
            dom = _run_chromium(binary, "--dump-dom", f"{gw.url}/ui/").stdout
        finally:
            gw.stop()
    finally:
        up.stop()
    assert "hidden" in _tag(dom, "login"), "the key form is shown on a gateway that has no master key"
    assert "hidden" not in _tag(dom, "admin-off"), dom[-3000:]
    message = _section(dom, "admin-off")
    assert "OPENCLAW_MASTER_KEY" in message and "export OPENCLAW_MASTER_KEY=" in message and "serve" in message
    assert "OPENCLAW_MASTER_KEY is not set" in re.search(r'id="status"[^>]*>([^<]*)<', dom).group(1)


def test_a_gateway_with_a_master_key_still_asks_for_it(env):
    binary = _chromium()
    gw, *_ = env
    dom = _run_chromium(binary, "--dump-dom", f"{gw.url}/ui/").stdout
    assert "hidden" not in _tag(dom, "login"), dom[-3000:]
    assert "hidden" in _tag(dom, "admin-off")
    assert re.search(r'id="status"[^>]*>master key needed<', dom)
