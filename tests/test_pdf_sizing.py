"""How the Anthropic adapter sizes inline PDFs for the max_tokens it sends when the client set none,
through the running gateway with the real openai SDK to a fake Messages API on 127.0.0.1:
- a PDF's pages are counted from its page tree's /Count, at the low end of Anthropic's 1,500-3,000
  tokens a page, and max_tokens is never below a floor (a 70-page report got max_tokens 1);
- counting inflates compressed object streams within one budget for the whole request and once per
  request, not per attempt: 150 small PDFs that each inflate to 16 MiB held the event loop (and
  every other request, /healthz included) for seconds on each attempt. What zlib inflates is
  metered where the adapter calls it, so the test does not depend on this machine's speed."""
from __future__ import annotations

import collections
import json
import math
import types
import zlib
from typing import Any, Callable

import pytest

from router.config import ModelSpec, parse_config
from service.asgi_thread import serve_in_thread
from service.providers import anthropic_input_tokens, pdf_pages
from service.providers.anthropic import to_anthropic
from tests.fake_upstream import read_body
from tests.gateway_harness import QualityRouter, Running
from tests.samples import CLAUDE_OK, file_part, object_stream, page_tree_pdf, pdf

OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
# What one request's PDFs may inflate, all of them together, charged in steps of 256 KiB.
BUDGET, STEP = 4 << 20, 256 << 10


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
    try:
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
    finally:
        stop()


@pytest.mark.parametrize("pages, max_tokens", [(70, 64000), (150, 1024)])
def test_a_long_pdf_gets_room_to_answer_or_the_floor(gateway, pages, max_tokens):
    # 70 pages at 1,500 tokens leave a 200k window room for the model's whole 64,000 (at 3,000 a page
    # they left none, and max_tokens 1 cut the answer after one token, billed). 150 pages may not
    # fit: max_tokens is the floor, and Anthropic's own count decides.
    gw, claude = gateway
    answer = gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Summarise this report."}, file_part(page_tree_pdf(pages))]}])
    assert answer.choices[0].message.content == "from claude"
    assert claude.bodies[-1][1]["max_tokens"] == max_tokens


def metered_zlib(charge: Callable[[float], None]) -> types.SimpleNamespace:
    """zlib as the PDF page counter sees it, with every inflate step charged: what it
    returned, or, for a step that failed, all it was allowed (zlib finds a bad checksum only once it
    has inflated the data before it)."""
    class Inflater:
        def __init__(self, *args: Any) -> None:
            self._real = zlib.decompressobj(*args)

        def decompress(self, data: Any, max_length: int = 0) -> bytes:
            try:
                out = self._real.decompress(data, max_length)
            except zlib.error:
                charge(max_length or math.inf)
                raise
            charge(len(out))
            return out

        def __getattr__(self, name: str) -> Any:  # eof, unconsumed_tail...
            return getattr(self._real, name)

    return types.SimpleNamespace(**{**vars(zlib), "decompressobj": Inflater})


# An object stream that inflates to 16 MiB, without a page tree: the old count inflated all of it.
BOMB_STREAM = zlib.compress(b"0" * (16 << 20), 9)
# The second stream, 3.5 MiB inflated, has a wrong checksum: zlib says so only once it has inflated
# all of it, and what a failed inflate took must count too.
CORRUPT_STREAM = zlib.compress(b"0" * (7 << 19), 9)[:-4] + bytes(4)


@pytest.mark.parametrize("stream, copies", [(BOMB_STREAM, 150), (CORRUPT_STREAM, 300)], ids=["whole", "corrupt-at-end"])
def test_pdfs_that_inflate_are_counted_within_one_budget_once_per_request(gateway, monkeypatch, stream, copies):
    gw, claude = gateway
    monkeypatch.setattr(anthropic_input_tokens, "_pdf_memo", {})  # nothing counted before this test
    inflated: collections.Counter[int] = collections.Counter()  # bytes inflated, by the Messages bodies sent before
    monkeypatch.setattr(pdf_pages, "zlib", metered_zlib(lambda n: inflated.update({len(claude.bodies): n})))
    content = [{"type": "text", "text": "Read these."}] + [file_part(pdf(object_stream(stream, 1)), f"{i}.pdf") for i in range(copies)]
    # claude-busy is overloaded: the request fails over to claude, a second Messages body.
    answer = gw.client(timeout=300).chat.completions.create(model="claude-busy", messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content == "from claude"
    assert [where for where, _ in claude.bodies] == ["busy", "ok"]
    # Their pages were not counted within the budget: sized as text, over the window, so the floor.
    assert [body["max_tokens"] for _, body in claude.bodies] == [1024, 1024]
    # 2.4 GB or 1 GB on each attempt before (16 MiB a PDF); now the budget, on the first attempt alone.
    assert 0 < inflated[0] <= BUDGET + STEP, inflated
    assert inflated[1] == 0, inflated


CLAUDE = ModelSpec.model_validate({"name": "c", "provider": "a", "upstream": "claude-sonnet-4-5", "context_window": 200000,
                                   "max_output_tokens": 128000, "price": {"input_per_1m": 3, "output_per_1m": 15}})


def packed_report(pages: int) -> bytes:
    """A PDF 1.5 whose page tree and pages are all inside a compressed object stream: no plain
    /Count to read, so counting it inflates."""
    objects = b"<< /Type /Pages /Kids [] /Count %d >> " % pages + b" ".join([b"<< /Type /Page /Parent 1 0 R >>"] * pages)
    return pdf(object_stream(zlib.compress(objects), pages + 1))


def test_a_request_counts_its_pdfs_once_whatever_its_attempts(monkeypatch):
    monkeypatch.setattr(anthropic_input_tokens, "_pdf_memo", {})  # nothing counted before this test
    counted = []
    count = pdf_pages.pdf_pages
    monkeypatch.setattr(pdf_pages, "pdf_pages", lambda *args: counted.append(args[0]) or count(*args))
    body = {"messages": [{"role": "user", "content": [file_part(packed_report(20)) for _ in range(4)]}]}
    first = to_anthropic(CLAUDE, body, stream=False)
    assert len(counted) == 4
    # A retry or a failover builds the body again: its PDFs are not counted again.
    again = to_anthropic(CLAUDE, body, stream=False)
    assert len(counted) == 4 and again["max_tokens"] == first["max_tokens"]
    # 80 pages, counted from the tree inside the streams: 120,000 tokens of a 200,000 window.
    assert 79_000 < first["max_tokens"] < 80_000
