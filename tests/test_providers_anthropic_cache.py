"""Claude's prompt cache through the Anthropic adapter: where the breakpoints go, and how cache
reads and writes come back in usage (a real server speaking Anthropic's wire format)."""
from __future__ import annotations

import json

from tests import test_providers_anthropic as anthropic
from tests.test_providers_anthropic import MESSAGE, MODEL, TOOLS, stream_events

server, provider = anthropic.server, anthropic.provider  # the adapter tests' fixtures, shared

EPHEMERAL = {"type": "ephemeral"}


def _marked(body):
    """(where, block) of every block of a Messages request that carries a cache breakpoint."""
    places = [*((f"tools[{i}]", t) for i, t in enumerate(body.get("tools") or [])),
              *((f"system[{i}]", b) for i, b in enumerate(body.get("system") or [])),
              *((f"messages[{i}].content[{j}]", b) for i, m in enumerate(body["messages"]) for j, b in enumerate(m["content"]))]
    return {where: block["cache_control"] for where, block in places if "cache_control" in block}


async def test_a_one_shot_request_marks_only_the_prefix_other_requests_share(server, provider):
    # Its history is read back by no later turn: a breakpoint there would write it at 1.25x for nothing.
    document = "lorem ipsum " * 2000
    one_shot = {"messages": [{"role": "system", "content": "You summarise."}, {"role": "user", "content": f"Summarise:\n{document}"}],
                "tools": TOOLS, "max_tokens": 300}
    server.reply(MESSAGE)
    await provider.complete(MODEL, one_shot)
    body = server.requests[-1].body
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": f"Summarise:\n{document}"}]}]
    assert body["system"] == [{"type": "text", "text": "You summarise.", "cache_control": EPHEMERAL}]
    assert _marked(body) == {"tools[1]": EPHEMERAL, "system[0]": EPHEMERAL}
    # A prefilled answer is no earlier turn: still one-shot.
    server.reply(MESSAGE)
    await provider.complete(MODEL, {**one_shot, "messages": [*one_shot["messages"], {"role": "assistant", "content": "{"}]})
    assert _marked(server.requests[-1].body) == {"tools[1]": EPHEMERAL, "system[0]": EPHEMERAL}
    # Without tools and system prompt, nothing is marked.
    server.reply(MESSAGE)
    await provider.complete(MODEL, {"messages": one_shot["messages"][1:]})
    assert _marked(server.requests[-1].body) == {}


def _calls(step, n):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"toolu_{step}_{k}", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": f"c{k}"})}}
        for k in range(n)]}


def _results(step, n):
    return [{"role": "tool", "tool_call_id": f"toolu_{step}_{k}", "content": f"{k}C"} for k in range(n)]


async def test_an_agent_step_wider_than_the_cache_lookback_still_reads_the_previous_turns_entry(server, provider):
    # Anthropic looks back 20 blocks from a breakpoint for an earlier entry; a step of 12 parallel
    # calls and their results adds 24. The next request marks the block the previous request's
    # history breakpoint was on, so it reads that entry.
    start = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Weather everywhere?"},
             _calls(0, 1), *_results(0, 1)]
    server.reply(MESSAGE)
    await provider.complete(MODEL, {"messages": start, "tools": TOOLS})
    before = server.requests[-1].body
    assert _marked(before) == {"tools[1]": EPHEMERAL, "system[0]": EPHEMERAL,
                               "messages[2].content[0]": EPHEMERAL, "messages[0].content[0]": EPHEMERAL}
    server.reply(MESSAGE)
    await provider.complete(MODEL, {"messages": [*start, _calls(1, 12), *_results(1, 12)], "tools": TOOLS})
    after = server.requests[-1].body
    assert [len(m["content"]) for m in after["messages"]] == [1, 1, 1, 12, 12]
    assert _marked(after) == {"tools[1]": EPHEMERAL, "system[0]": EPHEMERAL,
                              "messages[2].content[0]": EPHEMERAL, "messages[4].content[11]": EPHEMERAL}
    assert after["messages"][2] == before["messages"][2]  # the previous request's last block, marked alike
    assert after["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_0_0", "content": "0C", "cache_control": EPHEMERAL}]
    # A client's own breakpoints leave fewer free: the lookback mark is the first to go.
    marked_tools = [{**t, "cache_control": EPHEMERAL} for t in TOOLS]
    server.reply(MESSAGE)
    await provider.complete(MODEL, {"messages": [*start, _calls(1, 12), *_results(1, 12)], "tools": marked_tools})
    assert _marked(server.requests[-1].body) == {"tools[0]": EPHEMERAL, "tools[1]": EPHEMERAL, "system[0]": EPHEMERAL,
                                                 "messages[4].content[11]": EPHEMERAL}


def test_cache_breakpoints_keep_the_clients_first_and_never_exceed_four():
    from service.providers.anthropic import to_anthropic

    mark, hour = {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}
    tools = [{**t, "cache_control": mark} if i == 0 else t for i, t in enumerate(TOOLS)]
    body = {"tools": tools, "messages": [
        {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": mark}]},
        {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": mark}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c", "cache_control": mark},
        {"role": "user", "content": [{"type": "text", "text": "d", "cache_control": mark}, {"type": "text", "text": "e"}]}]}
    payload = to_anthropic(MODEL, body, stream=False)
    blocks = [*payload["tools"], *payload["system"], *(b for m in payload["messages"] for b in m["content"])]
    # The client's first four are kept (tool, system, "a", "c"); its fifth ("d") goes; nothing is added.
    assert [b.get("name") or b.get("text") for b in blocks if "cache_control" in b] == ["get_weather", "rules", "a", "c"]

    # One breakpoint of the client's: three of ours, history first, then the system prompt, then the tools.
    body = {"tools": TOOLS, "messages": [{"role": "system", "content": "rules"},
                                         {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": mark}]},
                                         {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}
    payload = to_anthropic(MODEL, body, stream=False)
    assert payload["tools"][-1]["cache_control"] == mark and "cache_control" not in payload["tools"][0]
    assert payload["system"] == [{"type": "text", "text": "rules", "cache_control": mark}]
    assert [b.get("cache_control") for m in payload["messages"] for b in m["content"]] == [mark, None, mark]

    # A 1-hour breakpoint of the client's: Anthropic refuses a 5-minute one before it, so ours go after only.
    body["messages"][1]["content"][0]["cache_control"] = hour
    payload = to_anthropic(MODEL, body, stream=False)
    assert "cache_control" not in payload["tools"][-1] and "cache_control" not in payload["system"][0]
    assert [b.get("cache_control") for m in payload["messages"] for b in m["content"]] == [hour, None, mark]


def test_a_mark_on_one_part_of_a_system_turn_ends_a_block_there():
    from service.providers.anthropic import to_anthropic

    # Joined into one block with the mark at its end, the changing time was inside the cached
    # prefix: every request wrote the cache, none read it.
    mark = {"type": "ephemeral"}
    body = {"messages": [{"role": "system", "content": [{"type": "text", "text": "STABLE PREFIX", "cache_control": mark},
                                                        {"type": "text", "text": "Current time: 12:01:33"}]},
                         {"role": "user", "content": "hi"}]}
    system = to_anthropic(MODEL, body, stream=False)["system"]
    assert system[0] == {"type": "text", "text": "STABLE PREFIX", "cache_control": mark}
    # Nor does a mark of ours go on the changing part: the client chose where its stable part ends.
    assert system[1] == {"type": "text", "text": "Current time: 12:01:33"}


async def test_cache_reads_and_writes_are_prompt_tokens_and_told_apart(server, provider):
    usage = {"input_tokens": 20, "cache_creation_input_tokens": 9000, "cache_read_input_tokens": 30000, "output_tokens": 45}
    server.reply({**MESSAGE, "usage": usage})
    result = await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}]})
    expected = {"prompt_tokens": 39020, "completion_tokens": 45, "total_tokens": 39065,
                "prompt_tokens_details": {"cached_tokens": 30000, "cache_write_tokens": 9000}}
    assert result["usage"] == expected
    events = stream_events()
    events[0][1]["message"]["usage"] = {**usage, "output_tokens": 1}
    events[-2][1]["usage"] = {"output_tokens": 45}  # the final counts: only the output's
    server.reply_sse(events)
    chunks = [c async for c in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]})]
    assert chunks[-1]["usage"] == expected
