"""Routing prices what a provider holds of an agent's prompt (its system prompt and tools, its
conversation so far) at the cached rate on that model: a conversation stays where its prompt is
cached while that is cheaper, and moves when the prompt changes, the cache has expired, or for
another tenant."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest

from router.request_view import view_chat_request
from service import session_memory
from service.hooks.prompt_cache_hook import PromptCacheHook
from service.pipeline import RequestContext
from tests.fake_upstream import ok
from tests.gateway_harness import QualityRouter, Running, fake_config

SYSTEM = "You are OpenClaw, a coding agent. Follow the workspace rules. " * 700  # ~44 KB, as OpenClaw sends
TOOL = {"type": "function", "function": {"name": "exec", "description": "Run a shell command.",
                                         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}}
# Same quality and output price: the input price alone ranks them. `claude` lists dearer but
# reads a cached prefix at a tenth; `gpt` has no cache discount.
MODELS = [
    {"name": "claude", "in": 3.0, "out": 2.0, "context_window": 200000, "capabilities": ["tools"],
     "price": {"cached_input_per_1m": 0.3, "cache_write_per_1m": 3.75}},
    {"name": "gpt", "in": 2.5, "out": 2.0, "context_window": 200000, "capabilities": ["tools"]},
]
QUALITY = {"claude": 0.8, "gpt": 0.8}


def turn(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def test_a_conversation_stays_on_the_model_that_holds_its_prompt_prefix(start_gateway, upstream):
    gw = start_gateway(models=MODELS, quality=QUALITY)
    client = gw.client()

    def routed(messages, **extra):
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, tools=[TOOL], **extra)
        return raw.headers["x-router-model"], raw.headers["x-router-reason"]

    # Cold, the list prices decide (and claude's first read would write the cache at 1.25x).
    assert routed(turn(SYSTEM, "list the files"))[0] == "gpt"
    # A turn the client keeps off gpt goes to claude, streamed as OpenClaw streams.
    stream = client.chat.completions.create(model="auto", messages=turn(SYSTEM, "run the tests"), tools=[TOOL], stream=True,
                                            stream_options={"include_usage": True}, max_completion_tokens=500,
                                            extra_body={"router": {"excluded_models": ["gpt"]}})
    assert [c.model for c in stream if c.choices][0] == "claude"
    # Both now hold the prefix; claude reads it at a tenth of its price, gpt at its list price.
    model, reason = routed(turn(SYSTEM, "fix the failing test"))
    assert model == "claude" and "prompt cached at claude (" in reason and "gpt (" in reason
    # /v1/route prices it as the request itself was priced.
    preview = httpx.post(f"{gw.base_url}/route", json={"model": "auto", "messages": turn(SYSTEM, "and commit"), "tools": [TOOL]}).json()
    shown = preview["request"]
    assert preview["model"] == "claude" and shown["cached_tokens"] == {"claude": shown["prefix_tokens"], "gpt": shown["prefix_tokens"]}
    assert shown["prefix_tokens"] > 10_000
    # Another system prompt is another prefix: nothing holds it.
    assert routed(turn(SYSTEM.replace("OpenClaw", "Other"), "fix the failing test"))[0] == "gpt"


def test_a_long_conversation_stays_where_its_history_is_cached(start_gateway, upstream):
    # A short system prompt no provider caches alone, and a history that is most of the prompt: the
    # model that served the previous turn holds all of it.
    gw = start_gateway(models=MODELS, quality=QUALITY)
    client = gw.client()
    history = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Read the log. " + "log line " * 6000},
               {"role": "assistant", "content": "Read it."}, {"role": "user", "content": "What failed?"}]
    first = client.chat.completions.create(model="auto", messages=history, extra_body={"router": {"excluded_models": ["gpt"]}})
    assert first.model == "claude"
    following = [*history, {"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "Fix it."}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=following)
    assert raw.headers["x-router-model"] == "claude" and "prompt cached at claude (" in raw.headers["x-router-reason"]
    # The same conversation with its history edited is not what claude served: the list prices decide.
    edited = [following[0], {"role": "user", "content": "Read the log. " + "log line " * 6001}, *following[2:]]
    assert client.chat.completions.with_raw_response.create(model="auto", messages=edited).headers["x-router-model"] == "gpt"


def test_a_turn_reaching_another_replica_is_priced_as_held_by_the_model_that_served_the_last(tmp_path, upstream, redis_url, monkeypatch):
    # Behind a load balancer an agent's turns land on any replica: with server.redis_url they share
    # what each provider holds, through the same session memory as tool-loop pins.
    url, prefix = redis_url
    monkeypatch.setenv("OPENCLAW_REDIS_PREFIX", prefix)
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=MODELS)
    config = config.model_copy(update={"server": config.server.model_copy(update={"redis_url": url})})
    a, b = Running(config, router=QualityRouter(QUALITY)), Running(config, router=QualityRouter(QUALITY))
    try:
        history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "list the files"}]
        first = a.client().chat.completions.create(model="auto", messages=history, tools=[TOOL],
                                                   extra_body={"router": {"excluded_models": ["gpt"]}})
        assert first.model == "claude"
        following = [*history, {"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "now run the tests"}]
        deadline = time.monotonic() + 5  # a's write reaches Redis from its background thread
        while True:
            raw = b.client().chat.completions.with_raw_response.create(model="auto", messages=following, tools=[TOOL])
            if raw.headers["x-router-model"] == "claude" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert raw.headers["x-router-model"] == "claude" and "prompt cached at claude (" in raw.headers["x-router-reason"]
    finally:
        a.stop()
        b.stop()


def _ctx(tenant: str, system: str = SYSTEM, answered_by: str | None = None) -> RequestContext:
    body = {"messages": turn(system, "next"), "tools": [TOOL]}
    ctx = RequestContext(request_id="r", body=body, routing=view_chat_request(body), headers={}, stream=False,
                         profile="auto", tenant=tenant)
    if answered_by is not None:
        ctx.answered_by, ctx.status = answered_by, "ok"
        ctx.attempts.append({"model": answered_by, "status": "ok"})
    return ctx


def _warm(hook: PromptCacheHook, ctx: RequestContext) -> dict[str, int]:
    asyncio.run(hook.pre(ctx))
    return dict(ctx.routing.warm_tokens)


def test_a_prompt_is_warm_for_its_tenant_only_and_only_for_the_caches_lifetime(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(session_memory, "time", SimpleNamespace(time=lambda: now[0]))
    hook = PromptCacheHook()
    served = _ctx("team-a", answered_by="claude")
    hook.finished(served)
    assert _warm(hook, _ctx("team-a")) == {"claude": served.routing.prefix_tokens}
    assert _warm(hook, _ctx("team-b")) == {}
    # A cache hit, or an upstream that failed, read nothing into the provider's cache.
    hit = _ctx("team-b", answered_by="gpt")
    hit.status, hit.attempts = "cache_hit", []
    hook.finished(hit)
    failed = _ctx("team-b", answered_by="gpt")
    failed.attempts[-1]["status"] = "error"
    hook.finished(failed)
    assert _warm(hook, _ctx("team-b")) == {}
    # A prompt under the providers' cacheable minimum is never looked up.
    hook.finished(_ctx("team-a", system="Be brief.", answered_by="claude"))
    assert _warm(hook, _ctx("team-a", system="Be brief.")) == {}
    now[0] += session_memory.PROMPT_TTL_S - 1
    assert _warm(hook, _ctx("team-a")) == {"claude": served.routing.prefix_tokens}
    now[0] += 1
    assert _warm(hook, _ctx("team-a")) == {}


def _served(hook: PromptCacheHook, body: dict, model: str) -> RequestContext:
    ctx = RequestContext(request_id="r", body=body, routing=view_chat_request(body), headers={}, stream=False,
                         profile="auto", tenant="t")
    asyncio.run(hook.pre(ctx))
    ctx.answered_by, ctx.status = model, "ok"
    ctx.attempts.append({"model": model, "status": "ok"})
    hook.finished(ctx)
    return ctx


def _held(hook: PromptCacheHook, body: dict) -> dict[str, int]:
    ctx = RequestContext(request_id="r2", body=body, routing=view_chat_request(body), headers={}, stream=False,
                         profile="auto", tenant="t")
    return _warm(hook, ctx)


def test_a_system_turn_added_half_way_is_a_new_start_as_anthropic_sees_it():
    # The Anthropic adapter sends every system turn ahead of the conversation: a reminder added
    # later changes the start of what Anthropic cached, so only the tools could still be held.
    hook = PromptCacheHook()
    first = {"messages": [{"role": "system", "content": "rules " * 2000}, {"role": "user", "content": "log " * 3000},
                          {"role": "assistant", "content": "read"}, {"role": "user", "content": "what failed?"}]}
    _served(hook, first, "claude")
    following = [*first["messages"], {"role": "assistant", "content": "the parser"}, {"role": "user", "content": "fix it"}]
    assert _held(hook, {"messages": following})["claude"] > 5000
    reminded = [*following[:-1], {"role": "system", "content": "Reminder: tests must pass."}, following[-1]]
    assert _held(hook, {"messages": reminded}) == {}


def test_a_clients_own_cache_breakpoint_moved_to_the_newest_message_still_matches():
    # Anthropic's advice: mark the newest message each turn. The previous one comes back unmarked,
    # and the provider still holds it.
    hook = PromptCacheHook()

    def user(text: str, marked: bool) -> dict:
        return {"role": "user", "content": [{"type": "text", "text": text, **({"cache_control": {"type": "ephemeral"}} if marked else {})}]}

    first = {"messages": [{"role": "system", "content": "rules " * 2000}, user("log " * 3000, False),
                          {"role": "assistant", "content": "read"}, user("what failed?", True)]}
    served = _served(hook, first, "claude")
    following = [*first["messages"][:3], user("what failed?", False), {"role": "assistant", "content": "x"}, user("fix it", True)]
    assert _held(hook, {"messages": following}) == {"claude": served.routing.cacheable_tokens}


def test_a_request_naming_its_model_is_not_looked_up_but_is_remembered():
    reads = []

    class Counted(session_memory.LocalMemory):
        async def held_prompts(self, starts):
            reads.append(starts)
            return await super().held_prompts(starts)

    hook = PromptCacheHook(Counted(0.0))
    body = {"messages": turn(SYSTEM, "next"), "tools": [TOOL]}
    named = RequestContext(request_id="r", body=body, routing=view_chat_request(body), headers={}, stream=False, profile=None)
    asyncio.run(hook.pre(named))
    assert reads == [] and named.routing.warm_tokens == {}  # nothing routes it: nothing to price
    named.answered_by, named.status = "claude", "ok"
    named.attempts.append({"model": "claude", "status": "ok"})
    hook.finished(named)
    assert _warm(hook, _ctx("default")) == {"claude": named.routing.prefix_tokens}


def test_served_prompts_past_the_caches_lifetime_are_let_go_and_their_number_is_bounded(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(session_memory, "time", SimpleNamespace(time=lambda: now[0]))
    memory = session_memory.LocalMemory(0.0)
    memory.prompt_served([("old-a", 2000), ("old-b", 2000)], "claude")
    now[0] += session_memory.PROMPT_TTL_S
    memory.prompt_served([("new", 3000)], "gpt")
    assert list(memory._served_prompts) == ["new"]  # what no provider holds any longer is not kept
    monkeypatch.setattr(session_memory, "PROMPTS_RECENT", 3)
    small = session_memory.LocalMemory(0.0)
    for i in range(5):
        small.prompt_served([(f"start-{i}", 2000)], "claude")
    assert list(small._served_prompts) == ["start-2", "start-3", "start-4"]
    assert asyncio.run(small.held_prompts(["start-0", "start-4"])) == {"claude": 2000}


def test_replicas_find_the_prompts_each_other_served_in_redis(redis_url):
    # Behind a load balancer an agent's next turn may reach another replica.
    url, prefix = redis_url
    a, b = (PromptCacheHook(session_memory.RedisMemory(session_memory.redis_client(url), prefix, 0.0)) for _ in range(2))
    served = _ctx("team-a", answered_by="claude")
    a.finished(served)
    a.memory.close()  # its background writes have landed
    try:
        assert _warm(b, _ctx("team-a")) == {"claude": served.routing.prefix_tokens}
        assert _warm(b, _ctx("team-b")) == {}
        # What b serves later of the same prompt is the newer entry, for both models.
        b.finished(_ctx("team-a", answered_by="gpt"))
        assert _warm(b, _ctx("team-a")) == {"claude": served.routing.prefix_tokens, "gpt": served.routing.prefix_tokens}
    finally:
        b.memory.close()


def test_deepseeks_own_cache_hit_count_is_billed_at_the_cached_price_and_reported_as_openais(start_gateway, upstream):
    # DeepSeek says `prompt_cache_hit_tokens`; the gateway bills and reports OpenAI's field.
    gw = start_gateway(models=[{"name": "deepseek-chat", "in": 0.28, "out": 0.42, "context_window": 128000,
                                "price": {"cached_input_per_1m": 0.028}}], quality={"deepseek-chat": 0.8})
    client = gw.client()
    messages = turn(SYSTEM, "list the files")
    upstream.default("deepseek-chat", ok("done", usage_fields={"prompt_cache_hit_tokens": 10_000, "prompt_cache_miss_tokens": 1}))
    answer = client.chat.completions.create(model="deepseek-chat", messages=messages)
    usage = answer.usage
    assert usage.prompt_tokens_details.cached_tokens == 10_000
    expected = ((usage.prompt_tokens - 10_000) * 0.28 + 10_000 * 0.028 + usage.completion_tokens * 0.42) / 1e6
    assert usage.model_extra["cost"] == pytest.approx(expected)
    streamed = client.chat.completions.create(model="deepseek-chat", messages=messages, stream=True,
                                              stream_options={"include_usage": True})
    last = [chunk for chunk in streamed][-1]
    assert last.usage.prompt_tokens_details.cached_tokens == 10_000
    assert last.usage.model_extra["cost"] == pytest.approx(expected)
