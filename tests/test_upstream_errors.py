"""Answers of the wrong shape, from each wire format's upstream (or a proxy in front of it), against a
real server: every one is a classified `UpstreamError` the gateway fails over on, never a crash
that would reach the client as a 500."""
from __future__ import annotations

import json

import pytest

from router.config import ModelSpec, Price, ProviderSpec
from service.asgi_thread import serve_in_thread
from service.providers import UpstreamError, build_provider
from tests.fake_upstream import WireServer, read_body

MODEL = ModelSpec(name="m", provider="p", upstream="up-model", price=Price(input_per_1m=1, output_per_1m=2))
BODY = {"messages": [{"role": "user", "content": "hi"}]}
BASE_PATH = {"openai": "/v1", "anthropic": "", "gemini": "/v1beta"}


@pytest.fixture(scope="module")
def server():
    with WireServer() as srv:
        yield srv


@pytest.fixture(params=["openai", "anthropic", "gemini"])
async def provider(request, server):
    p = build_provider(ProviderSpec(kind=request.param, base_url=server.url + BASE_PATH[request.param], timeout_s=2))
    yield p
    await p.aclose()


async def call(provider, streamed: bool) -> None:
    if streamed:
        async for _ in provider.stream(MODEL, BODY):
            pass
    else:
        await provider.complete(MODEL, BODY)


def error_event(kind: str, error):
    return ("error", {"type": "error", "error": error}) if kind == "anthropic" else (None, {"error": error})


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("error", [
    "quota exceeded",  # a proxy's plain-string error
    ["quota exceeded"],
    None,
    42,
    {"message": ["not", "a", "string"], "type": ["nor", "this"], "code": {"nested": 1}, "details": 7},
])
async def test_an_error_of_any_shape_in_a_200_fails_over(server, provider, streamed, error):
    kind = provider.spec.kind
    if streamed:
        server.reply_sse([error_event(kind, error)])
    else:
        server.reply(error_event(kind, error)[1])
    with pytest.raises(UpstreamError) as info:
        await call(provider, streamed)
    if error is None and kind == "openai":
        # `"error": null` is no error (some servers send it beside every good answer,
        # tests/test_upstream_dialects.py); with nothing else, it is no answer either (a stream of
        # only that ends without [DONE]: a cut connection).
        assert info.value.kind == ("connection" if streamed else "malformed") and info.value.failover
        return
    assert info.value.kind == "server" and info.value.failover
    assert info.value.message == ("quota exceeded" if error == "quota exceeded" else "error object in the upstream's answer")
    assert info.value.code is None and info.value.status is None


async def test_an_error_objects_type_and_numeric_code_classify_it(server, provider):
    kind = provider.spec.kind
    server.reply_sse([error_event(kind, {"type": "rate_limit_error", "message": "slow down"})])
    server.reply_sse([error_event(kind, {"code": 404, "message": "no such model", "status": "NOT_FOUND"})])
    server.reply(error_event(kind, {"type": "invalid_request_error", "message": "bad field", "param": "top_k", "code": "bad_field"})[1])
    kinds = []
    for streamed in (True, True, False):
        with pytest.raises(UpstreamError) as info:
            await call(provider, streamed)
        kinds.append((info.value.kind, info.value.status))
    assert kinds == [("rate_limit", None), ("not_found", 404), ("bad_request", None)]
    assert (info.value.code, info.value.param) == ("bad_field", "top_k")


@pytest.mark.parametrize("status", [400, 429, 503])
@pytest.mark.parametrize("body", [
    {"error": "quota exceeded"},
    {"error": ["quota exceeded"]},
    {"error": None, "message": 12},
    ["not", "an", "object"],
    {"error": {"message": {"text": "x"}, "details": 7, "code": 12.5}},
])
async def test_an_error_response_of_any_shape_is_classified_by_its_status(server, provider, status, body):
    server.reply(body, status=status)
    with pytest.raises(UpstreamError) as info:
        await call(provider, False)
    assert (info.value.kind, info.value.status) == ({400: "bad_request", 429: "rate_limit", 503: "server"}[status], status)
    # The error's own words where it has them, else the body as the upstream sent it.
    message = info.value.message
    assert (message == "quota exceeded") if body == {"error": "quota exceeded"} else (json.loads(message) == body)
    assert info.value.code is None


TEXT = {"type": "text", "text": "hi"}
MALFORMED = {
    "openai": [
        (False, {"choices": [{"message": {"role": "assistant", "content": "hi"}}, "second choice"]}),
        (False, {"choices": [{"message": {"role": "assistant", "content": "hi"}}], "usage": [3, 4]}),
        (True, [(None, {"choices": ["not an object"]})]),
        (True, [(None, {"choices": [{"delta": "hi"}]})]),
        (True, [(None, {"choices": [], "usage": "lots"})]),
    ],
    "anthropic": [
        (False, {"content": ["hi"]}),
        (False, {"content": [{"type": "text", "text": 5}]}),
        (False, {"content": [TEXT], "usage": [1]}),
        (False, {"content": [TEXT], "usage": {"input_tokens": "many"}}),
        (False, {"content": [TEXT], "stop_reason": ["end_turn"]}),
        (True, [("message_start", {"type": "message_start", "message": "hi"})]),
        (True, [("message_start", {"type": "message_start", "message": {"usage": {"output_tokens": [1]}}})]),
        (True, [("content_block_start", {"type": "content_block_start", "index": [0], "content_block": {"type": "tool_use"}})]),
        (True, [("content_block_start", {"type": "content_block_start", "index": 0, "content_block": "text"})]),
        (True, [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": ["text_delta"]})]),
        (True, [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": {}}})]),
        (True, [("message_delta", {"type": "message_delta", "delta": {"stop_reason": ["end_turn"]}})]),
        (True, [("message_delta", {"type": "message_delta", "usage": "none"})]),
    ],
    "gemini": [
        (False, {"candidates": ["hi"]}),
        (False, {"candidates": {"content": {}}}),
        (False, {"candidates": [{"content": {"parts": "hi"}}]}),
        (False, {"candidates": [{"content": {"parts": ["hi"]}}]}),
        (False, {"candidates": [{"content": {"parts": [{"text": 5}]}, "finishReason": "STOP"}]}),
        (False, {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": ["STOP"]}]}),
        (False, {"candidates": [{"content": {"parts": [{"functionCall": "f"}]}, "finishReason": "STOP"}]}),
        (False, {"candidates": [], "promptFeedback": "blocked"}),
        (False, {"candidates": [{"content": {"parts": [{"text": "hi"}]}}], "usageMetadata": {"promptTokenCount": "x"}}),
        (True, [(None, {"candidates": [{"content": "hi"}]})]),
        (True, [(None, {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": {"r": 1}}]})]),
        (True, [(None, {"candidates": [{"content": {"parts": [{"text": "hi"}]}}], "usageMetadata": [12]})]),
    ],
}


@pytest.mark.parametrize("provider, streamed, answer", [(kind, streamed, answer) for kind, cases in MALFORMED.items()
                                                      for streamed, answer in cases], indirect=["provider"])
async def test_an_answer_of_the_wrong_shape_is_malformed(server, provider, streamed, answer):
    if streamed:
        server.reply_sse(answer)
    else:
        server.reply(answer)
    with pytest.raises(UpstreamError) as info:
        await call(provider, streamed)
    assert info.value.kind == "malformed" and info.value.failover


PAGE = b"<html><body><h1>Welcome</h1>please log in</body></html>"
EVENTS = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


@pytest.fixture
def raw_server():
    """Answers each request with the next queued (content type or None, body), with status 200."""
    replies: list[tuple[bytes | None, bytes]] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await read_body(receive)
        content_type, body = replies.pop(0)
        headers = [(b"content-type", content_type)] if content_type is not None else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    url, stop = serve_in_thread(app)
    yield url, replies
    stop()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_a_page_that_answers_a_stream_is_malformed(raw_server, kind):
    url, replies = raw_server
    replies.append((b"text/html; charset=utf-8", PAGE))
    provider = build_provider(ProviderSpec(kind=kind, base_url=url + BASE_PATH[kind], timeout_s=2))
    try:
        with pytest.raises(UpstreamError) as info:
            await call(provider, True)
        # Not `connection` (a stream cut before its first event): the upstream answered, with no stream.
        assert info.value.kind == "malformed" and info.value.failover and "text/html" in info.value.message
    finally:
        await provider.aclose()


async def test_a_stream_whose_content_type_is_not_named_is_read_as_one(raw_server):
    url, replies = raw_server
    replies.append((None, EVENTS))
    provider = build_provider(ProviderSpec(kind="openai", base_url=f"{url}/v1", timeout_s=2))
    try:
        # A server that names no content type is still read as the stream it may be.
        chunks = [chunk async for chunk in provider.stream(MODEL, BODY)]
        assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["hi"]
    finally:
        await provider.aclose()


async def test_a_whole_json_answer_to_a_stream_request_is_malformed(server, provider):
    # A server that ignores `stream: true`.
    server.reply({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]})
    with pytest.raises(UpstreamError) as info:
        await call(provider, True)
    assert info.value.kind == "malformed" and "application/json" in info.value.message
