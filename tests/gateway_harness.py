"""Shared pieces of the gateway tests: a running gateway on 127.0.0.1 and a fixed-prediction router.

`QualityRouter` runs the real policy (`router.policy.decide`: constraints, context windows,
live health) over fixed per-model quality, so a test knows which model is chosen first and
which ones follow in the failover chain without depending on a trained artifact.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any, Callable, Mapping

import numpy as np
import uvicorn

from router.config import Config, ModelSpec, Profile, parse_config
from router.policy import decide
from router.predictor import Predictions
from router.types import Constraints, Decision, LiveStats, RoutingRequest


def serve(app: Any) -> tuple[str, Callable[[], None]]:
    """uvicorn with lifespan on (so shutdown flushes the outcome log) in a thread; free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, see serve_command
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.01)
    assert server.started, "gateway failed to start"

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


class QualityRouter:
    def __init__(self, quality: Mapping[str, float], output_tokens: float = 50.0):
        self.quality = dict(quality)
        self.output_tokens = output_tokens
        self.calls: list[RoutingRequest] = []

    def route(self, request: RoutingRequest, *, catalog: list[ModelSpec], profile: Profile,
              constraints: Constraints = Constraints(), live: Mapping[str, LiveStats] | None = None,
              embedding: np.ndarray | None = None) -> Decision:
        self.calls.append(request)
        names = [s.name for s in catalog]
        p = np.array([[self.quality.get(n, 0.5) for n in names]])
        out = np.full_like(p, self.output_tokens)
        cost = np.array([[s.price.cost(request.input_tokens, self.output_tokens) for s in catalog]])
        latency = np.array([[s.ttft_s + self.output_tokens / s.throughput_tps for s in catalog]])
        pred = Predictions(names, p, np.zeros_like(p), out, cost, latency)
        return decide(pred, request, catalog=catalog, profile=profile, constraints=constraints, live=live, embedding=embedding)


def fake_config(base_url: str, db_url: str, *, models: list[dict[str, Any]] | None = None, timeout_s: float = 1.0,
                extra: str = "", cooldown_s: float = 0.5) -> Config:
    """m1 (best), m2, m3 on one fake upstream (OpenAI's API: it takes files and logprobs); `models`
    overrides the model list (`in`/`out`: list prices; `price`: more price fields)."""
    takes = ["tools", "json", "files", "logprobs"]
    models = models or [
        {"name": "m1", "context_window": 100000, "capabilities": takes},
        {"name": "m2", "context_window": 100000, "capabilities": takes},
        {"name": "m3", "context_window": 100000, "capabilities": takes, "tags": ["local"]},
    ]
    lines = ["models:"]
    for m in models:
        lines.append(f"  - name: {m['name']}")
        lines.append("    provider: fake")
        price = {"input_per_1m": m.get("in", 1.0), "output_per_1m": m.get("out", 2.0), **m.get("price", {})}
        lines.append(f"    price: {json.dumps(price)}")
        for key in ("context_window", "capabilities", "tags", "limits", "max_output_tokens", "fallbacks", "max_choices", "router_model"):
            if key in m:
                lines.append(f"    {key}: {m[key]!r}".replace("'", '"'))
    text = "\n".join(lines) + f"""
providers:
  fake: {{kind: openai, base_url: "{base_url}", timeout_s: {timeout_s}, answer_timeout_s: {timeout_s}, connect_timeout_s: 1.0}}
reliability: {{max_retries: 1, backoff_base_s: 0.01, backoff_max_s: 0.05, max_retry_after_s: 1.0, breaker_failures: 3, breaker_cooldown_s: {cooldown_s}}}
server: {{db: "{db_url}", prompt_storage: full, max_body_bytes: 1000000}}
cache: {{enabled: false}}
{extra}"""
    return parse_config(text, "test-config")


class Running:
    """A gateway serving on 127.0.0.1 with its outcome log, for one test."""

    def __init__(self, config: Config, router: Any = None, **app_kwargs: Any):
        from service.app import create_app

        self.config = config
        self.app = create_app(config, router=router, load_artifact=False, **app_kwargs)
        self.gateway = self.app.state.gateway
        self.url, self._stop = serve(self.app)
        self.base_url = f"{self.url}/v1"

    def client(self, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="test-key", max_retries=0, **kwargs)

    def async_client(self, **kwargs: Any) -> Any:
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key="test-key", max_retries=0, **kwargs)

    def outcomes(self, at_least: int = 1) -> list[dict[str, Any]]:
        """The logged outcomes, once at least `at_least` have been written (post-hooks run in the background)."""
        import time

        deadline = time.monotonic() + 10
        while True:
            rows = self.gateway.outcome_log.read()
            if len(rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def outcome(self, request_id: str) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = self.gateway.outcome_log.get(request_id)
            if row is not None:
                return row
            time.sleep(0.02)
        raise AssertionError(f"no outcome logged for {request_id}")

    def stop(self) -> None:
        self._stop()


DEFAULT_QUALITY = {"m1": 0.9, "m2": 0.8, "m3": 0.7}


MSG = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]


def ask(gw: Running, **kwargs: Any) -> tuple[Any, Any]:
    """One chat request through the real SDK: (the parsed answer, the response headers)."""
    raw = gw.client().chat.completions.with_raw_response.create(model=kwargs.pop("model", "auto"), messages=MSG, **kwargs)
    return raw.parse(), raw.headers


def routed_questions(gw: Running, n: int) -> list[tuple[str, str]]:
    """`n` distinct `auto` questions through the real SDK: each one's (request id, answering model)."""
    client = gw.client()
    answered = []
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": f"question {i}"}])
        answered.append((raw.headers["x-request-id"], raw.parse().model))
    return answered
