"""The OpenAI-compatible adapter against a real fake upstream: pass-through, streams, error mapping."""
from __future__ import annotations

import json

import openai
import pytest

from router.config import ModelSpec, Price, ProviderSpec
from service.providers import UpstreamError, build_provider
from service.providers.base import parse_retry_after
from tests.fake_upstream import (
    FakeUpstream, context_length, cut_stream, error, hang, invalid_json, malformed_chunk, not_found, ok,
    rate_limit, server_error, stall_stream,
)

KEY = "sk-test-0123456789abcdef"
MODEL = ModelSpec(name="public-name", provider="up", upstream="upstream-id", price=Price(input_per_1m=1, output_per_1m=2))

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "send_email", "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}},
]
BODY = {
    "model": "auto",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "max_completion_tokens": 77,
    "temperature": 0.3,
}


@pytest.fixture
def up(upstream, monkeypatch):
    upstream.reset()
    monkeypatch.setenv("FAKE_UP_KEY", KEY)
    return upstream


@pytest.fixture
async def provider(up):
    p = build_provider(ProviderSpec(kind="openai", base_url=up.base_url, api_key_env="FAKE_UP_KEY", timeout_s=0.5, answer_timeout_s=0.5, headers={"x-org": "o1"}))
    yield p
    await p.aclose()


async def collect(provider, body):
    return [chunk async for chunk in provider.stream(MODEL, body)]


async def test_complete_passes_body_through_and_names_public_model(up, provider):
    up.script("upstream-id", ok("sunny"))
    result = await provider.complete(MODEL, BODY)
    assert result["model"] == "public-name"
    assert result["choices"][0]["message"]["content"] == "sunny"
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"] > 0
    (req,) = up.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["x-org"] == "o1"
    assert req.body == {**BODY, "model": "upstream-id", "stream": False}


async def test_a_history_from_gemini_reaches_openai_without_the_thought_signatures_in_its_ids(up, provider):
    # The Gemini adapter carries Gemini 3's signatures in tool-call ids; OpenAI refuses ids over 40
    # characters, so a conversation that moves here after a Gemini tool call would get a 400.
    from service.providers.reasoning import id_with_signature

    signed = id_with_signature("call_1", "c2lnbmF0dXJl/+" * 40)
    messages = [*BODY["messages"][:2], {**BODY["messages"][2], "tool_calls": [{**BODY["messages"][2]["tool_calls"][0], "id": signed}]},
                {**BODY["messages"][3], "tool_call_id": signed}]
    up.script("upstream-id", ok("sunny"))
    await provider.complete(MODEL, {**BODY, "messages": messages})
    (req,) = up.requests
    assert req.body["messages"] == BODY["messages"]


async def test_an_output_limit_above_the_models_is_lowered_to_it(up, provider):
    # A router may pick a model whose limit is below the client's (OpenClaw asks for up to 32,768):
    # the upstream refuses more than its limit with a 400, which fails nothing over.
    up.script("upstream-id", ok("sunny"))
    capped = MODEL.model_copy(update={"max_output_tokens": 16384})
    await provider.complete(capped, {**BODY, "max_completion_tokens": 32768})
    assert up.requests[-1].body["max_completion_tokens"] == 16384 and "max_tokens" not in up.requests[-1].body
    await provider.complete(MODEL, {**BODY, "max_completion_tokens": 32768})  # its limit is the default: not known
    assert up.requests[-1].body["max_completion_tokens"] == 32768


async def test_both_output_limits_are_sent_as_the_tighter_one(up, provider):
    # The answer must keep to each limit the client gave, whichever field it gave it in.
    for limits in ({"max_tokens": 5, "max_completion_tokens": 40}, {"max_tokens": 40, "max_completion_tokens": 5}):
        up.script("upstream-id", ok("sunny"))
        await provider.complete(MODEL, {**BODY, **limits})
        assert (up.requests[-1].body["max_tokens"], up.requests[-1].body["max_completion_tokens"]) == (5, 5)


async def test_insufficient_quota_is_not_a_rate_limit(up, provider):
    up.script("upstream-id", error(429, "You exceeded your current quota, please check your plan and billing details.",
                                   "insufficient_quota", "insufficient_quota"))
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, BODY)
    assert info.value.kind == "auth" and info.value.failover and not info.value.retryable
    # An ordinary rate limit stays one, though OpenAI's message links to the billing page.
    up.script("upstream-id", error(429, "Rate limit reached for gpt-4 on requests per min. You can increase your rate "
                                   "limit by adding a payment method at https://platform.openai.com/account/billing.",
                                   "rate_limit_exceeded", "requests"))
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, BODY)
    assert info.value.kind == "rate_limit"


async def test_complete_returns_tool_calls(up, provider):
    up.script("upstream-id", ok(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    result = await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS})
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


async def test_stream_requests_usage_and_yields_chunks(up, provider):
    up.script("upstream-id", ok("one two three", tool_calls=[{"name": "send_email", "arguments": {"to": "a@b.c"}}]))
    chunks = await collect(provider, {**BODY, "stream_options": {"include_usage": False}})
    req = up.requests[-1]
    assert req.body["stream"] is True and req.body["stream_options"] == {"include_usage": True}
    assert req.body["tools"] == TOOLS and req.body["messages"] == BODY["messages"]
    assert all(c["model"] == "public-name" and c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "one two three"
    args = "".join(tc["function"].get("arguments", "") for c in chunks if c["choices"]
                   for tc in c["choices"][0]["delta"].get("tool_calls") or [])
    assert json.loads(args) == {"to": "a@b.c"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["tool_calls"]


async def test_stream_event_larger_than_a_read_buffer_arrives_whole(up, provider):
    # One SSE event of 1 MB (a long answer or tool-call arguments sent in one chunk).
    text = "x" * 1_000_000
    up.script("upstream-id", ok(text))
    chunks = await collect(provider, BODY)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == text

@pytest.mark.parametrize(
    "reply, kind, status, retry_after",
    [
        (rate_limit(retry_after=3), "rate_limit", 429, 3.0),
        (server_error(502), "server", 502, None),
        (hang(5), "timeout", None, None),
        (context_length(), "context_length", 400, None),
        (not_found(), "not_found", 404, None),
        (invalid_json(), "malformed", 200, None),
        (error(401, "Incorrect API key provided", "invalid_api_key", "invalid_request_error"), "auth", 401, None),
        (error(400, "temperature must be <= 2", None, "invalid_request_error"), "bad_request", 400, None),
    ],
)
async def test_complete_maps_errors(up, provider, reply, kind, status, retry_after):
    up.script("upstream-id", reply)
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, BODY)
    err = info.value
    assert (err.kind, err.status, err.retry_after) == (kind, status, retry_after)
    assert err.retryable == (kind in {"rate_limit", "server", "timeout", "connection", "malformed"})


@pytest.mark.parametrize(
    "reply, kind, n_before",
    [
        (cut_stream(after_chunks=2), "connection", 2),
        (cut_stream(after_chunks=1), "connection", 1),
        (stall_stream(after_chunks=2, seconds=5), "timeout", 2),
        (malformed_chunk(after_chunks=3), "malformed", 3),
        (invalid_json(), "malformed", 0),
        (rate_limit(retry_after=1), "rate_limit", 0),
        (hang(5), "timeout", 0),
    ],
)
async def test_stream_failures_raise_after_the_chunks_received(up, provider, reply, kind, n_before):
    up.script("upstream-id", reply)
    got = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(MODEL, BODY):
            got.append(chunk)
    assert info.value.kind == kind
    assert len(got) == n_before


async def test_key_never_appears_in_errors(up, provider):
    up.script("upstream-id", error(401, f"Incorrect API key provided: {KEY}.", "invalid_api_key"))
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, BODY)
    assert KEY not in str(info.value) and KEY not in info.value.message and "***" in info.value.message


async def test_missing_key_env_is_an_auth_error_without_a_call(up, monkeypatch):
    monkeypatch.delenv("FAKE_UP_KEY")
    p = build_provider(ProviderSpec(kind="openai", base_url=up.base_url, api_key_env="FAKE_UP_KEY"))
    with pytest.raises(UpstreamError) as info:
        await p.complete(MODEL, BODY)
    await p.aclose()
    assert info.value.kind == "auth" and "FAKE_UP_KEY" in info.value.message
    assert up.requests == []


async def test_connection_refused_is_a_connection_error():
    with FakeUpstream() as dead:
        url = dead.base_url
    p = build_provider(ProviderSpec(kind="openai", base_url=url, connect_timeout_s=1))
    with pytest.raises(UpstreamError) as info:
        await p.complete(MODEL, BODY)
    await p.aclose()
    assert info.value.kind == "connection" and info.value.retryable


def _self_signed(tmp_path) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


async def test_an_upstream_with_an_untrusted_certificate_is_refused(tmp_path):
    import socket
    import ssl
    import threading

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:  # a TLS endpoint whose handshake the client must refuse
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    p = build_provider(ProviderSpec(kind="openai", base_url=f"https://127.0.0.1:{port}/v1", connect_timeout_s=5))
    with pytest.raises(UpstreamError) as info:
        await p.complete(MODEL, BODY)
    await p.aclose()
    thread.join(5)
    listener.close()
    assert info.value.kind == "connection" and "certificate" in info.value.message.lower()


def test_retry_after_parses_seconds_milliseconds_and_http_dates():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:40 GMT"}, now=now) == pytest.approx(20.0)
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    # Not a finite wait: as if absent ("inf" had been a 500 on every later request naming the model).
    for bad in ("inf", "1e400", "nan", "-inf"):
        assert parse_retry_after({"retry-after": bad}) is None and parse_retry_after({"retry-after-ms": bad}) is None
    assert parse_retry_after({"retry-after": "99999999999"}) == 86_400.0  # at most a day
    assert parse_retry_after({"retry-after-ms": "inf", "retry-after": "5"}) == 5.0  # the other header may say it


async def test_error_objects_inside_a_200_and_missing_usage():
    from tests.fake_upstream import WireServer

    role = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "x",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}
    with WireServer() as srv:
        p = build_provider(ProviderSpec(kind="openai", base_url=srv.url))
        srv.reply_sse([(None, role), (None, {"error": {"message": "The server had an error", "type": "server_error"}})])
        srv.reply_sse([(None, {"error": {"message": "This model's maximum context length is 4096 tokens", "type": "invalid_request_error"}})])
        srv.reply({"id": "c2", "choices": [{"index": 0, "message": {"role": "assistant", "content": "four words of text"}, "finish_reason": "stop"}]})
        srv.reply({"choices": "nope"})
        kinds = []
        for _ in range(2):
            with pytest.raises(UpstreamError) as info:
                async for _chunk in p.stream(MODEL, BODY):
                    pass
            kinds.append(info.value.kind)
        assert kinds == ["server", "context_length"]
        result = await p.complete(MODEL, BODY)
        assert "usage" not in result  # the gateway estimates it, as for a stream (tests/test_gateway_failover.py)
        with pytest.raises(UpstreamError) as info:
            await p.complete(MODEL, BODY)
        assert info.value.kind == "malformed"
        await p.aclose()


async def test_https_proxy_and_no_proxy_are_honoured(up, monkeypatch):
    import asyncio

    seen: list[str] = []

    async def forward_proxy(reader, writer):  # answers itself, as a proxy in front of the upstream would relay
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = next(int(line.split(":")[1]) for line in head.split("\r\n") if line.lower().startswith("content-length"))
        await reader.readexactly(length)
        seen.append(head.split("\r\n")[0])
        answer = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "upstream-id",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "via proxy"}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(forward_proxy, "127.0.0.1", 0)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    monkeypatch.setenv("NO_PROXY", "localhost")
    far = build_provider(ProviderSpec(kind="openai", base_url="http://upstream.invalid/v1", api_key_env="FAKE_UP_KEY"))
    answer = await far.complete(MODEL, BODY)
    assert answer["choices"][0]["message"]["content"] == "via proxy"
    assert seen == ["POST http://upstream.invalid/v1/chat/completions HTTP/1.1"]  # absolute form: a proxied request

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the fake upstream is exempt: straight there
    up.script("upstream-id", ok("direct"))
    near = build_provider(ProviderSpec(kind="openai", base_url=up.base_url, api_key_env="FAKE_UP_KEY"))
    assert (await near.complete(MODEL, BODY))["choices"][0]["message"]["content"] == "direct" and len(seen) == 1
    for p in (far, near):
        await p.aclose()
    server.close()


async def test_azures_prompt_filter_chunk_is_not_passed_on_and_chunks_keep_openais_fields():
    from tests.fake_upstream import WireServer

    azure_first = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    text = {"id": "c1", "object": "", "created": 0, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}
    end = {**text, "created": 1700000000, "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {**end, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    with WireServer() as srv:
        p = build_provider(ProviderSpec(kind="openai", base_url=srv.url))
        srv.reply_sse([(None, azure_first), (None, text), (None, end), (None, usage), (None, "[DONE]")])
        chunks = [c async for c in p.stream(MODEL, BODY)]
    assert "prompt_filter_results" not in chunks[0] and len(chunks) == 3
    for chunk in chunks:  # each one OpenAI's chunk type, as the SDK validates it
        assert chunk["object"] == "chat.completion.chunk" and chunk["created"] > 0
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
    assert chunks[-1]["usage"]["total_tokens"] == 4
