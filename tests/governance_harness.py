"""What the governance tests share: a gateway with governance on over a fake upstream (its
`env` fixture is in conftest.py), a webhook receiver for alerts, and small client helpers."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai

from service.asgi_thread import serve_in_thread
from service.governance.runtime import Governance, GovernanceSettings
from tests.fake_upstream import FakeUpstream, ok, read_body
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

MASTER = "mk-test-" + "9" * 24
ANSWER = "y" * 400  # 100 completion tokens at the fake upstream's 4 characters a token
MODELS = [  # models of OpenAI's API: they read files
    {"name": "m1", "in": 10.0, "out": 10.0, "context_window": 100000, "capabilities": ["files"]},
    {"name": "m2", "in": 5.0, "out": 5.0, "context_window": 100000, "capabilities": ["files"]},
    {"name": "m3", "in": 1.0, "out": 1.0, "context_window": 100000, "capabilities": ["files"]},
]


class Webhook:
    """A real local webhook receiver that records every JSON POST."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.received.append(json.loads(await read_body(receive)))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def governed_gateway(tmp_path: Path, timeout_s: float = 1.0) -> Iterator[tuple]:
    """A gateway with governance on over a fake upstream, its admin client and a webhook:
    (gateway, admin client, governance, upstream, webhook); the `env` fixture in conftest."""
    hook = Webhook()
    hook_url, stop_hook = serve_in_thread(hook)
    up = FakeUpstream().start()
    for m in ("m1", "m2", "m3"):
        up.default(m, ok(ANSWER))
    config = fake_config(up.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", models=MODELS, timeout_s=timeout_s)
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=MASTER,
                                                webhook_url=hook_url + "/hook"))
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    try:
        yield gw, admin, gov, up, hook
    finally:
        admin.close()
        gw.stop()
        up.stop()
        stop_hook()


def client(gw: Running, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0)


def chat(c: openai.OpenAI, model: str = "auto", **kw):
    return c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                                       max_tokens=200, **kw)


def new_key(admin: httpx.Client, **fields) -> tuple[dict, str]:
    r = admin.post("/admin/keys", json={"name": fields.pop("name", "k"), **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["secret"]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def settled(admin: httpx.Client, n: int) -> list[dict]:
    """Spend rows are written by post-hooks off the latency path: wait until n are there."""
    return wait_for(lambda: (rows := admin.get("/admin/requests", params={"limit": 1000}).json()["data"]) and len(rows) >= n and rows)
