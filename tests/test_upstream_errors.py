"""Answers of the wrong shape, from each wire format's upstream (or a proxy in front of it), against a
real server: every one is a classified `UpstreamError` the gateway fails over on, never a crash
that would reach the client as a 500."""
from __future__ import annotations

import json

import pytest

from router.config import ModelSpec, Price, ProviderSpec
from service.providers import UpstreamError, build_provider
from tests.fake_upstream import WireServer

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
