"""Cheap text features: each marker fires on the text it describes and not on plain prose."""
from __future__ import annotations

import numpy as np
import pytest

from router.features import FEATURE_NAMES, MAX_SCAN_CHARS, request_features, text_features
from router.request_view import view_chat_request, view_prompt

F = {name: i for i, name in enumerate(FEATURE_NAMES)}
PROSE = "The weather was pleasant and we walked along the river for an hour"


def feat(text: str, **kw) -> list[float]:
    return text_features(text, **kw)


def test_code_markers():
    code = "def add(a, b):\n    return a + b\n```python\nimport os\n```"
    assert feat(code)[F["code_markers"]] >= 4
    assert feat(PROSE)[F["code_markers"]] == 0


def test_math_markers_and_digits():
    math = "Solve the equation $x^2 = 16$. How many solutions are there?"
    v = feat(math)
    assert v[F["math_markers"]] >= 3 and v[F["digit_share"]] > 0
    assert feat(PROSE)[F["math_markers"]] == 0


def test_question_and_choices():
    mc = "Which gas do plants absorb?\nA) oxygen\nB) carbon dioxide\nC) helium\nD) argon"
    v = feat(mc)
    assert v[F["question_form"]] == 1 and v[F["choice_options"]] == 4
    assert feat(PROSE)[F["question_form"]] == 0 and feat(PROSE)[F["choice_options"]] == 0


def test_language_shares():
    assert feat("这是一个关于数学的问题吗？")[F["cjk_share"]] > 0.8
    v = feat("Où est la bibliothèque, s'il vous plaît ?")
    assert 0 < v[F["non_ascii_share"]] < 0.2 and v[F["cjk_share"]] == 0
    assert feat(PROSE)[F["non_ascii_share"]] == 0


def test_length_scales_with_the_text():
    short, long = feat("hi"), feat("word " * 2000)
    assert long[F["log_text_chars"]] > short[F["log_text_chars"]] + 5


def test_only_the_head_is_scanned():
    tail_code = "x" * MAX_SCAN_CHARS + "\ndef f():\n    return 1"
    assert feat(tail_code)[F["code_markers"]] == 0


def test_chat_request_turns_tools_and_json():
    body = {
        "messages": [
            {"role": "system", "content": "You are an agent." * 100},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Write a function that sorts a list"},
        ],
        "tools": [{"type": "function", "function": {"name": "run", "parameters": {}}}],
        "response_format": {"type": "json_object"},
    }
    req = view_chat_request(body)
    x = request_features([req, view_prompt(PROSE)])
    assert x.shape == (2, len(FEATURE_NAMES)) and x.dtype == np.float32
    assert x[0, F["n_turns"]] == 2 and x[0, F["has_tools"]] == 1 and x[0, F["needs_json"]] == 1
    assert x[0, F["instruction_words"]] >= 1
    assert x[1, F["n_turns"]] == 1 and x[1, F["has_tools"]] == 0
    # The system prompt sets the request's size (cost, context window), not a single feature:
    # the same turn under a 48 KB agent prompt is the same row as under a one-line one.
    agent = {**body, "messages": [{"role": "system", "content": "You are an agent. " * 2800}, *body["messages"][1:]]}
    assert view_chat_request(agent).input_tokens > 10 * req.input_tokens
    assert np.array_equal(request_features([view_chat_request(agent)])[0], x[0])


def test_legacy_functions_need_tools_and_count_as_input():
    fn = {"name": "lookup", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    legacy = view_chat_request({"messages": [{"role": "user", "content": "weather?"},
                                             {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": '{"city": "Oslo"}'}},
                                             {"role": "function", "name": "lookup", "content": "sunny"}],
                                "functions": [fn], "function_call": "auto"})
    modern = view_chat_request({"messages": [{"role": "user", "content": "weather?"}], "tools": [{"type": "function", "function": fn}]})
    assert "tools" in legacy.needs and legacy.has_tools and legacy.input_tokens > modern.input_tokens - 10


def test_everything_the_upstream_reads_counts_as_input():
    plain = {"messages": [{"role": "user", "content": "fill the form"}]}
    schema = {"type": "json_schema", "json_schema": {"name": "form", "schema": {
        "type": "object", "properties": {f"field_{i}": {"type": "string", "description": "x" * 40} for i in range(500)}}}}
    base = view_chat_request(plain).input_tokens
    # a schema is billed (Anthropic's adapter writes it into the system prompt): ~40 kB, ~10k tokens
    assert view_chat_request({**plain, "response_format": schema}).input_tokens > base + 8000
    fn = {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "y" * 4000}}}}
    tools = view_chat_request({**plain, "tools": [{"type": "function", "function": fn}]}).input_tokens
    both = view_chat_request({**plain, "tools": [{"type": "function", "function": fn}], "functions": [fn]}).input_tokens
    assert both > tools + 900  # a client sending both lists sends both
    predicted = view_chat_request({**plain, "prediction": {"type": "content", "content": "z" * 8000}}).input_tokens
    assert predicted > base + 1500


def test_a_turn_without_user_text_routes_on_the_last_user_text_never_the_system_prompt():
    system = {"role": "system", "content": "You are OpenClaw, a coding agent. " * 200}
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
    assert view_chat_request({"messages": [system, image]}).text == ""  # nothing a user wrote: not the 7 KB prompt
    earlier = [system, {"role": "user", "content": "what sign is in these photos?"},
               {"role": "assistant", "content": "Send them and I will describe them."}, image]
    assert view_chat_request({"messages": earlier}).text == "what sign is in these photos?"
    tool_loop = [system, {"role": "user", "content": "fix the failing test in foo.py"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": '{"ocr": "STOP"}'}]
    assert view_chat_request({"messages": tool_loop}).text == "fix the failing test in foo.py"


def test_images_count_as_input_tokens():
    def with_images(*details):
        parts = [{"type": "text", "text": "what is this?"}]
        parts += [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", **({"detail": d} if d else {})}}
                  for d in details]
        return view_chat_request({"messages": [{"role": "user", "content": parts}]}).input_tokens

    text_only = with_images()
    assert with_images(None) == text_only + 765 and with_images("low", "high") == text_only + 85 + 765


def test_inline_files_and_audio_are_sized_apart_from_the_text_and_referenced_files_are_flagged():
    import base64

    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF" * 30_000).decode()  # 120,000 bytes
    audio = base64.b64encode(bytes(32_000)).decode()  # 32,000 bytes of WAV
    text = {"type": "text", "text": "Summarise this document."}
    plain = view_chat_request({"messages": [{"role": "user", "content": [text]}]})
    view = view_chat_request({"messages": [
        {"role": "user", "content": [text, {"type": "file", "file": {"filename": "r.pdf", "file_data": pdf}}]},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                                     {"type": "file", "file": {"file_id": "file-6F2ksmvXxt4VdoqmHRw6kL"}}]}]})
    assert view.attachment_bytes == 152_000
    # a PDF at one token a byte, audio at 1/16 of one
    assert view.attachment_tokens == 120_000 + 2_000
    assert view.unsized_attachments == 1
    # The context-window estimate stays the text's: a 120 KB PDF is no 120,000-token prompt.
    assert view.input_tokens < plain.input_tokens + 10 and plain.attachment_tokens == 0


def test_the_shipped_router_judges_an_agent_turn_by_its_user_text_not_its_system_prompt():
    from router.engine import LearnedRouter, default_artifact

    turn = [{"role": "user", "content": "Write a Python function that merges two sorted lists"}]
    bare = view_chat_request({"messages": turn})
    agent = view_chat_request({"messages": [{"role": "system", "content": "You are OpenClaw, a coding agent. " * 1400}, *turn]})
    pred = LearnedRouter.load(default_artifact()).predict([bare, agent])
    np.testing.assert_array_equal(pred.p_good[0], pred.p_good[1])
    np.testing.assert_array_equal(pred.output_tokens[0], pred.output_tokens[1])
    # The 48 KB it carries is paid for: every model's predicted cost grows with it.
    assert (pred.cost_usd[1] > pred.cost_usd[0]).all()


def test_token_estimate_counts_a_cjk_character_as_a_token_not_a_quarter():
    from router.request_view import estimate_tokens

    assert estimate_tokens("word " * 400) == 500  # English: four characters a token
    chinese = "请解释一下机器学习中的过拟合现象以及如何避免它" * 100  # 2,300 characters
    assert estimate_tokens(chinese) == len(chinese)
    assert 0.5 * len("Привет, как дела?") <= estimate_tokens("Привет, как дела?") <= len("Привет, как дела?")
    body = {"messages": [{"role": "system", "content": "你是一个乐于助人的助手。" * 300}, {"role": "user", "content": chinese}]}
    assert view_chat_request(body).input_tokens >= 3600 + 2300


def test_the_shipped_routers_costs_follow_the_requests_max_tokens_and_n():
    from router.engine import LearnedRouter, default_artifact

    router = LearnedRouter.load(default_artifact())
    turn = [{"role": "user", "content": "Explain the history of the Roman empire in detail"}]
    free, capped, eight = (view_chat_request({"messages": turn, **extra}) for extra in ({}, {"max_tokens": 5}, {"n": 8}))
    assert view_chat_request({"messages": turn, "max_tokens": 5, "max_completion_tokens": 40}).max_output_tokens == 5
    pred = router.predict([free, capped, eight])
    assert (pred.output_tokens[0] > 5).all() and (pred.output_tokens[1] <= 5).all()
    # A 5-token answer costs 5 tokens and takes 5 tokens' time: gpt-4 was excluded from a $0.001
    # cap at $0.0065 predicted, though 5 tokens cost it $0.0003 at most.
    assert (pred.cost_usd[1] < pred.cost_usd[0]).all() and (pred.latency_s[1] < pred.latency_s[0]).all()
    prices = np.array([router.predictor.prices[m] for m in pred.models])
    for row, n in ((0, 1), (2, 8)):  # every one of n answers is billed; the prompt once
        expected = (eight.input_tokens * prices[:, 0] + n * pred.output_tokens[row] * prices[:, 1]) / 1e6
        np.testing.assert_allclose(pred.cost_usd[row], expected)


def test_input_text_parts_are_the_text_routed_on():
    # The Responses API's part type, which the Anthropic and Gemini adapters take in chat bodies.
    view = view_chat_request({"messages": [{"role": "user", "content": [{"type": "input_text", "text": "Prove that sqrt(2) is irrational."}]}]})
    assert view.text == "Prove that sqrt(2) is irrational." and view.input_tokens >= 8


def test_the_prefix_an_agent_resends_is_its_system_prompt_and_tools_not_the_conversation():
    tool = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
    system = "You are a coding agent. " * 2000  # 48,000 characters
    history = [{"role": "user", "content": "open main.py " * 500}, {"role": "assistant", "content": "done " * 500},
               {"role": "user", "content": "now fix it"}]
    agent = view_chat_request({"messages": [{"role": "system", "content": system}, *history], "tools": [tool] * 12})
    prefix = (len(system) + 12 * len(str(tool))) / 4
    assert agent.prefix_tokens == pytest.approx(prefix, abs=1)
    assert agent.input_tokens > agent.prefix_tokens + 2000  # the history is not part of it
    # With an assistant turn the adapters mark the whole prompt for the provider's cache.
    assert agent.cacheable_tokens == agent.input_tokens
    first = view_chat_request({"messages": [{"role": "system", "content": system}, history[0]], "tools": [tool] * 12})
    assert first.cacheable_tokens == first.prefix_tokens == agent.prefix_tokens
    assert view_chat_request({"messages": history}).prefix_tokens == 0
    assert view_prompt(PROSE).prefix_tokens == 0
