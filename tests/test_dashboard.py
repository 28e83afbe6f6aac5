"""The /ui dashboard in headless Chromium (Debian's `chromium`): real numbers render, and a
screenshot shows a drawn page, after real traffic through the gateway."""
from __future__ import annotations

import itertools
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
    _, a = new_key(admin, name="alpha-team-key", team="alpha")
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
    assert 'data-budget="' in dom and "month budget of team 'alpha'" in dom
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


T0 = 1_800_000_000 - 1_800_000_000 % 60
DOCUMENT = {
    "generated_at": T0 + 700,
    "summary": {"requests": 55, "cost_usd": 0.221, "cache_hit_rate": 0.0, "error_rate": 0.0,
                "latency_s": {"p50": 0.1, "p95": 0.3}, "ttft_s": {"p50": None, "p95": None}},
    # Spend in minutes 0, 1 and 10 only: the server lists no bucket for the eight idle minutes.
    "spend_by_model": {"bucket_s": 60.0, "t": [T0, T0 + 60, T0 + 600], "series": {"m1": [0.01, 0.02, 0.191]}},
    "spend_by_key": {"bucket_s": 60.0, "t": [T0, T0 + 60, T0 + 600], "series": {"k1": [0.01, 0.02, 0.191]}},
    "routing": [{"model": "big", "requests": 2, "cost_usd": 0.2}, {"model": "small", "requests": 50, "cost_usd": 0.02},
                {"model": None, "requests": 3, "cost_usd": 0.0}],
    "budgets": [{"id": "b1", "scope": "team", "scope_id": "a", "period": "month", "share": 0.9993, "soft_threshold": 0.8,
                 "spent_usd": 0.04997, "limit_usd": 0.05, "projected_window_end_usd": None, "label": "x", "window": "m"}],
    "forecast": {"forecast_month_end_usd": 1.0}, "recent": [], "alerts": [],
}


def _serve_ui(document: dict, status: int = 200):
    """The shipped /ui files and a fixed /admin/dashboard answer, over real HTTP."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    ui = Path(__file__).resolve().parent.parent / "service" / "ui"
    types = {"html": "text/html", "js": "text/javascript", "css": "text/css"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("#")[0]
            if path == "/admin/dashboard":
                body, kind, code = json.dumps(document).encode(), "application/json", status
            else:
                name = path.removeprefix("/ui/") or "index.html"
                if not (ui / name).is_file():  # the browser's own /favicon.ico
                    self.send_error(404)
                    return
                body, kind, code = (ui / name).read_bytes(), types[name.rsplit(".", 1)[1]], 200
            self.send_response(code)
            self.send_header("content-type", kind)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_dashboard_charts_read_true_to_the_data():
    binary = _chromium()
    server = _serve_ui(DOCUMENT)
    try:
        dom = _run_chromium(binary, "--dump-dom", f"http://127.0.0.1:{server.server_port}/ui/#key=k").stdout
    finally:
        server.shutdown()
    assert 'data-rendered="true"' in dom, dom[-2000:]
    chart = dom[dom.index('id="chart-model"'):dom.index('id="chart-key"')]
    # One point per minute from the first bucket to the last, the idle minutes at zero spend.
    d = re.search(r'<path d="([^"]+)"', chart).group(1)
    points = [(float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+),([\d.]+)", d)]
    top = points[:len(points) // 2]
    assert len(top) == 11
    baseline = points[-1][1]
    assert [y for _, y in top[2:10]] == [baseline] * 8 and top[10][1] < baseline
    gaps = {round(b[0] - a[0], 1) for a, b in itertools.pairwise(top)}
    assert len(gaps) == 1
    assert re.findall(r'class="tick"[^>]*>([^<]*)<', chart) == ["$0", "$0.05", "$0.1", "$0.15", "$0.2"]
    assert "USD per minute" in chart
    routing = dom[dom.index('id="routing"'):dom.index('id="budgets"')]
    labels = re.findall(r'<div class="bar-row"><span>([^<]*)</span>', routing)
    assert labels == ["small", "no model answered", "big"]  # by requests, which the bars show
    assert "$0.0500 / $0.0500 · 99.9%" in dom  # not full, though rounding shows it spent to the cent


def _dom(document: dict, status: int = 200, fragment: str = "#key=k") -> str:
    binary = _chromium()
    server = _serve_ui(document, status)
    try:
        return _run_chromium(binary, "--dump-dom", f"http://127.0.0.1:{server.server_port}/ui/{fragment}").stdout
    finally:
        server.shutdown()


@pytest.mark.parametrize("status, answer", [
    (401, {"error": {"code": "invalid_api_key", "message": "Incorrect master key provided."}}),
    (403, {"error": {"code": "admin_disabled", "message": "no master key"}}),
])
def test_the_hidden_board_is_not_drawn_under_the_key_form_or_the_admin_off_card(tmp_path, status, answer):
    binary = _chromium()
    server = _serve_ui(answer, status)
    shot = tmp_path / "page.png"
    try:
        result = _run_chromium(binary, f"--screenshot={shot}", "--window-size=1280,1000",
                               f"http://127.0.0.1:{server.server_port}/ui/")
    finally:
        server.shutdown()
    assert shot.exists(), result.stderr[-2000:]
    from PIL import Image

    # Both cards end above y=450; `main { display: grid }` drew the board's empty tiles and panels
    # below them, `hidden` as it was.
    below = Image.open(shot).convert("RGB").crop((0, 450, 1280, 1000))
    assert below.getcolors() == [(1280 * 550, (0xF6, 0xF7, 0xFB))]


def _budget(id_: str, share: float, label: str, **extra) -> dict:
    return {"id": id_, "scope": "team", "scope_id": id_, "period": "day", "share": share, "soft_threshold": 0.8,
            "spent_usd": share * 0.05, "reserved_usd": 0.0, "limit_usd": 0.05, "projected_window_end_usd": None,
            "label": label, "window": "2027-01-15", **extra}


def test_budgets_show_their_labels_and_an_exhausted_one_reads_as_refusing():
    method = "least-squares line through the daily spend of the last 1 day(s), projected to month end"
    label = "day budget of key 'alpha-app' (key_8003357a53d48cd3)"
    document = {**DOCUMENT, "forecast": {"forecast_month_end_usd": 6.71, "days_observed": 1, "method": method},
                "budgets": [_budget("spent", 0.9999, label, scope="key", scope_id="key_8003357a53d48cd3"),
                            _budget("reserved", 0.95, "day budget of team 'r'", reserved_usd=0.05 * 0.0499),
                            _budget("soft", 0.85, "day budget of team 's'"), _budget("low", 0.1, "day budget of team 'l'")]}
    dom = _dom(document)
    assert 'data-rendered="true"' in dom, dom[-2000:]
    rows = {part.split('"', 1)[0]: part.split("</section>")[0] for part in dom.split('data-budget="')[1:]}
    assert f">{label}<" in rows["spent"] and "key key_8003357a53d48cd3 (day)" not in dom  # shown, not a tooltip
    # Within 0.1% of its limit, counting what is reserved in flight: refused, not "100.0%" in orange.
    for name in ("spent", "reserved"):
        assert 'data-state="bad"' in rows[name] and "exhausted" in rows[name] and 'class="bad"' in rows[name]
    assert 'data-state="warn"' in rows["soft"] and "exhausted" not in rows["soft"]
    assert "data-state" not in rows["low"]
    assert _text(dom, "t-forecast-method") == method
    assert f'title="{method}"' in dom
