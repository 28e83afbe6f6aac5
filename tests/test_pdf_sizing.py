"""How the Anthropic adapter sizes inline PDFs for the max_tokens it sends when the client set none,
through the running gateway with the real openai SDK to a fake Messages API on 127.0.0.1:
- a PDF's pages are counted from its page tree's /Count, at the low end of Anthropic's 1,500-3,000
  tokens a page, and max_tokens is never below a floor (a 70-page report got max_tokens 1);
- counting inflates compressed object streams within one budget for the whole request and once per
  request, not per attempt: 150 small PDFs that each inflate to 16 MiB held the event loop (and
  every other request, /healthz included) for seconds on each attempt."""
from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from typing import Any

import httpx
import pytest

from router.config import ModelSpec, parse_config
from service.asgi_thread import serve_in_thread
from service.providers.anthropic import to_anthropic
from tests.fake_upstream import read_body
from tests.gateway_harness import QualityRouter, Running

CLAUDE_OK = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
             "content": [{"type": "text", "text": "from claude"}], "stop_reason": "end_turn", "stop_sequence": None,
             "usage": {"input_tokens": 10, "output_tokens": 3}}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


class FakeClaude:
    """A Messages API on 127.0.0.1 that records each request body; under /busy it is overloaded (529)."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = json.loads(await read_body(receive))
        busy = scope["path"].startswith("/busy")
        self.bodies.append(("busy" if busy else "ok", body))
        status, answer = (529, OVERLOADED) if busy else (200, CLAUDE_OK)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


@pytest.fixture
def gateway(tmp_path):
    claude = FakeClaude()
    url, stop = serve_in_thread(claude)
    text = f"""
models:
  - {{name: claude, provider: anth, upstream: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 64000,
     price: {{input_per_1m: 3, output_per_1m: 15}}, capabilities: [tools, vision, files]}}
  - {{name: claude-busy, provider: anth_busy, upstream: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 64000,
     price: {{input_per_1m: 3, output_per_1m: 15}}, capabilities: [tools, vision, files], fallbacks: [claude]}}
providers:
  anth: {{kind: anthropic, base_url: "{url}", timeout_s: 5}}
  anth_busy: {{kind: anthropic, base_url: "{url}/busy", timeout_s: 5}}
reliability: {{max_retries: 0, backoff_base_s: 0.01, backoff_max_s: 0.05, breaker_failures: 50, breaker_cooldown_s: 0.5}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite"}}
cache: {{enabled: false}}
"""
    gw = Running(parse_config(text, "pdf-sizing"), router=QualityRouter({"claude": 0.9, "claude-busy": 0.1}))
    try:
        yield gw, claude
    finally:
        gw.stop()
        stop()


def file_part(pdf: bytes, name: str = "report.pdf") -> dict[str, Any]:
    return {"type": "file", "file": {"filename": name, "file_data": "data:application/pdf;base64," + base64.b64encode(pdf).decode()}}


def report(pages: int) -> bytes:
    """An uncompressed PDF of `pages` pages with its page tree."""
    kids = b"".join(b"%d 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>\nendobj\n" % (i + 3) for i in range(pages))
    return (b"%%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [%s] /Count %d >>\nendobj\n" % (b" ".join(b"%d 0 R" % (i + 3) for i in range(pages)), pages)
            + kids + b"%%EOF\n")


# An object stream that inflates to 16 MiB, without a page tree: the old count inflated all of it.
BOMB_STREAM = zlib.compress(b"0" * (16 << 20), 9)


def bomb(stream: bytes) -> bytes:
    return (b"%%PDF-1.5\n1 0 obj\n<< /Type /ObjStm /N 1 /First 0 /Filter /FlateDecode /Length %d >>\nstream\n" % len(stream)
            + stream + b"\nendstream\nendobj\n%%EOF\n")


@pytest.mark.parametrize("pages, max_tokens", [(70, 64000), (150, 1024)])
def test_a_long_pdf_gets_room_to_answer_or_the_floor(gateway, pages, max_tokens):
    # 70 pages at 1,500 tokens leave a 200k window room for the model's whole 64,000 (at 3,000 a page
    # they left none, and max_tokens 1 cut the answer after one token, billed). 150 pages may not
    # fit: max_tokens is the floor, and Anthropic's own count decides.
    gw, claude = gateway
    answer = gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Summarise this report."}, file_part(report(pages))]}])
    assert answer.choices[0].message.content == "from claude"
    assert claude.bodies[-1][1]["max_tokens"] == max_tokens


# The second stream, 3.5 MiB inflated, has a wrong checksum: zlib says so only once it has inflated
# all of it, and what a failed inflate took must count too.
CORRUPT_STREAM = zlib.compress(b"0" * (7 << 19), 9)[:-4] + bytes(4)


@pytest.mark.parametrize("stream, copies", [(BOMB_STREAM, 150), (CORRUPT_STREAM, 300)], ids=["whole", "corrupt-at-end"])
def test_pdfs_that_inflate_do_not_hold_the_event_loop(gateway, stream, copies):
    gw, claude = gateway
    # The yardstick: this machine's time to inflate 16 MiB. The PDFs cost 150 or 66 times that on the
    # event loop, per attempt; the whole request now costs a few MiB of inflating.
    inflate_s = min(_timed(lambda: zlib.decompress(BOMB_STREAM)) for _ in range(3))
    content = [{"type": "text", "text": "Read these."}] + [file_part(bomb(stream), f"{i}.pdf") for i in range(copies)]
    outcome: dict[str, Any] = {}

    def ask() -> None:
        # claude-busy is overloaded: the request fails over to claude, a second Messages body.
        outcome["answer"] = gw.client(timeout=300).chat.completions.create(
            model="claude-busy", messages=[{"role": "user", "content": content}])

    asking = threading.Thread(target=ask)
    worst = 0.0
    with httpx.Client(base_url=gw.url, timeout=300) as probe:
        probe.get("/healthz")  # connected
        asking.start()
        while asking.is_alive():
            started = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            worst = max(worst, time.perf_counter() - started)
    asking.join()
    assert outcome["answer"].choices[0].message.content == "from claude"
    assert [where for where, _ in claude.bodies] == ["busy", "ok"]
    # Their pages were not counted within the budget: sized as text, over the window, so the floor.
    assert [body["max_tokens"] for _, body in claude.bodies] == [1024, 1024]
    assert worst < 10 * inflate_s, f"/healthz waited {worst:.2f} s; 16 MiB inflate in {inflate_s:.3f} s"


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


CLAUDE = ModelSpec.model_validate({"name": "c", "provider": "a", "upstream": "claude-sonnet-4-5", "context_window": 200000,
                                   "max_output_tokens": 128000, "price": {"input_per_1m": 3, "output_per_1m": 15}})


def packed_report(pages: int, tag: int) -> bytes:
    """A PDF 1.5 whose page tree and pages are all inside a compressed object stream (no plain
    /Count to read), with 600 KiB of other objects beside them there."""
    objects = (b"<< /Type /Pages /Kids [] /Count %d >> " % pages
               + b" ".join(b"<< /Type /Page /Parent 2 0 R >>" for _ in range(pages))
               + b" ".join(b"<< /Annot %d /Tag %d >>" % (i, tag) for i in range(30_000)))
    packed = zlib.compress(objects)
    return (b"%%PDF-1.5\n1 0 obj\n<< /Type /ObjStm /N %d /First 0 /Filter /FlateDecode /Length %d >>\nstream\n" % (pages, len(packed))
            + packed + b"\nendstream\nendobj\n%%EOF\n")


def test_a_request_counts_its_pdfs_once_whatever_its_attempts():
    def body(tag: int) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": [file_part(packed_report(20, tag * 10 + i)) for i in range(4)]}]}

    # A first attempt inflates each PDF's objects; a retry or failover builds the body again.
    firsts = [body(tag) for tag in range(3)]
    first_s = min(_timed(lambda b=b: to_anthropic(CLAUDE, b, stream=False)) for b in firsts)
    again_s = min(_timed(lambda: to_anthropic(CLAUDE, firsts[0], stream=False)) for _ in range(3))
    assert again_s < first_s / 4, f"a second attempt took {again_s * 1000:.1f} ms, the first {first_s * 1000:.1f} ms"
    # 80 pages, counted from the tree inside the streams: 120,000 tokens of a 200,000 window.
    assert 79_000 < to_anthropic(CLAUDE, firsts[0], stream=False)["max_tokens"] < 80_000
