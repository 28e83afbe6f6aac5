"""The /ui dashboard in headless Chromium (Debian's `chromium`): real numbers render, and a
screenshot shows a drawn page, after real traffic through the gateway."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import httpx
import pytest

from tests.governance_harness import MASTER, chat, client, new_key, settled


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; CI must install it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    return path


def _run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _text(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"#{element_id} not in the rendered page"
    return m.group(1)


def test_dashboard_renders_real_numbers(env, tmp_path):
    binary = _chromium()
    gw, admin, gov, up, hook = env
    a_key, a = new_key(admin, name="alpha-team-key", team="alpha")
    _, b = new_key(admin, name="beta-team-key", team="beta")
    admin.post("/admin/budgets", json={"scope": "team", "scope_id": "alpha", "period": "month", "limit_usd": 0.05})
    for _ in range(3):
        chat(client(gw, a))
    for _ in range(2):
        chat(client(gw, b), model="m3")
    stream = client(gw, b).chat.completions.create(model="m2", messages=[{"role": "user", "content": "stream"}],
                                                   stream=True, max_tokens=100)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    settled(admin, 6)
    expected = admin.get("/admin/dashboard").json()
    assert expected["summary"]["requests"] == 6

    url = f"{gw.url}/ui/#key={MASTER}"
    dom = _run_chromium(binary, "--dump-dom", url).stdout
    assert 'data-rendered="true"' in dom, dom[-2000:]
    assert _text(dom, "t-requests") == "6"
    assert _text(dom, "t-cost").startswith("$") and _text(dom, "t-cost") != "$0"
    assert re.fullmatch(r"\d+ ms / \d+ ms|[\d.]+ s / [\d.]+ s|\d+ ms / [\d.]+ s", _text(dom, "t-latency"))
    assert _text(dom, "t-ttft") != "– / –"  # the streamed request measured a TTFT
    for model in ("m1", "m2", "m3"):
        assert f'data-series="{model}"' in dom
    for name in ("alpha-team-key", "beta-team-key"):
        assert f'data-series="{name}"' in dom
    for row in expected["recent"]:
        assert f'data-request="{row["request_id"]}"' in dom
    assert 'data-budget="' in dom and "team alpha (month)" in dom
    assert MASTER not in dom  # the key was taken from the fragment and not written into the page

    shot = tmp_path / "dashboard.png"
    result = _run_chromium(binary, f"--screenshot={shot}", "--window-size=1280,1600", url)
    assert shot.exists(), result.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # charts and text, not a blank or error page
    # The stacked chart's first series colour (#2f6fed) is drawn somewhere on the page.
    assert any(abs(r - 0x2F) < 40 and abs(g - 0x6F) < 40 and abs(b_ - 0xED) < 40 for _, (r, g, b_) in colours)


def test_dashboard_data_needs_the_master_key(env):
    gw, *_ = env
    page = httpx.get(f"{gw.url}/ui/")
    assert page.status_code == 200 and "/ui/app.js" in page.text and MASTER not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{gw.url}/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{gw.url}/ui/../app.py").status_code == 404
    assert httpx.get(f"{gw.url}/admin/dashboard").status_code == 401
