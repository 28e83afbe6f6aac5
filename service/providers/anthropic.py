"""Anthropic Messages API adapter: OpenAI chat body → /v1/messages → OpenAI chat.completion.

Translated both ways: system prompt (one text block per system/developer turn), messages
(consecutive same-role turns merged because Anthropic requires alternation; `role: "tool"` turns
become `tool_result` blocks in a user turn; the shapes Anthropic refuses, as `conversation_shape`
says), tools and tool_choice, assistant tool_calls ↔ `tool_use` blocks, images and files (PDF and
text documents), prompt-cache breakpoints (`anthropic_cache`), the default max_tokens
(`anthropic_input_tokens`), reasoning_effort → `thinking`, thinking blocks → `reasoning_content`
(LiteLLM's field; never sent back: Anthropic wants its signed blocks), stop sequences, usage (cache
reads and writes), stop reasons, streaming events (message_start, content_block_start/delta with
text_delta, thinking_delta and input_json_delta, message_delta, message_stop, error) and errors
(overloaded 529, 429 with retry-after, "prompt is too long").
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any, AsyncIterator

from router.config import ModelSpec
from router.request_view import content_text, IMAGE_PART_TYPES, wants_logprobs
from service.providers import attachments
from service.providers.anthropic_cache import mark_cache_breakpoints, system_blocks, system_pieces
from service.providers.anthropic_input_tokens import input_tokens
from service.providers.answer_fields import as_count, as_int, as_object, as_text
from service.providers.base import Provider, UpstreamError, error_in_body, output_limit, tool_arguments
from service.providers.conversation_shape import HISTORY_TOOL_DESCRIPTION, OPENING_USER_TEXT, history_tool_names, last_turn
from service.providers.envelope import chunk, completion, parse_json_event, prompt_usage, stream_head, usage_chunk
from service.providers.reasoning import THINKING_BUDGETS, reasoning_effort, refuse_logprobs, split_signature
from service.schemas import FUNCTION_NAME  # Anthropic's rule for a tool's name is OpenAI's

ANTHROPIC_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",  # cut off by the window: not a finished answer
}

JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."

IMAGE_MIME_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")  # what the Messages API takes


def _image_block(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        media_type, data = attachments.split_data_url(url, "image/png")
        if media_type not in IMAGE_MIME_TYPES:
            # Refused before the call, and `unsupported`: another model may read it (Gemini takes
            # HEIC), so a routed request fails over; one naming the model gets the 400.
            raise attachments.refused(where, f"Anthropic models take images of type {', '.join(IMAGE_MIME_TYPES)}, "
                                      f"not {media_type}", kind="unsupported")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _file_block(file: attachments.Inline, where: str) -> dict[str, Any]:
    """A file as the Messages API takes it: a PDF or a text as a `document` (titled with its file
    name), an image as an `image`."""
    if file.mime_type in IMAGE_MIME_TYPES:
        return {"type": "image", "source": {"type": "base64", "media_type": file.mime_type, "data": file.data}}
    if file.mime_type == "application/pdf":
        source = {"type": "base64", "media_type": "application/pdf", "data": file.data}
    elif file.mime_type.startswith("text/"):  # a document's text source is text/plain, whatever the text
        try:
            text = base64.b64decode("".join(file.data.split()), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise attachments.refused(where, f"the {file.mime_type} file is not base64 of UTF-8 text") from None
        source = {"type": "text", "media_type": "text/plain", "data": text}
    else:
        raise attachments.refused(where, f"Anthropic models take PDF, text and {', '.join(IMAGE_MIME_TYPES)} files, "
                                  f"not {file.mime_type}")
    return {"type": "document", "source": source, **({"title": file.filename} if file.filename else {})}


def _part_block(part: Any, where: str) -> dict[str, Any] | None:
    if isinstance(part, str):
        return {"type": "text", "text": part} if part.strip() else None
    if not isinstance(part, dict):
        return None
    text = attachments.part_text(part)
    kind = part.get("type")
    if text is not None:
        # The Messages API refuses text blocks that are empty or only whitespace; OpenAI clients
        # send them beside tool calls.
        block = {"type": "text", "text": text} if text.strip() else None
    elif kind in IMAGE_PART_TYPES:
        block = _image_block(attachments.image_url(part, where, "Anthropic"), where)
    elif kind == "file":
        block = _file_block(attachments.file_part(part, where, "Anthropic"), where)
    elif kind == "input_audio":
        raise attachments.refused(where, "Anthropic models take no audio; ask for a model that does, or send a transcript")
    else:
        raise attachments.unknown_part(where, kind, "Anthropic")
    if block is not None and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]  # the client's own breakpoint
    return block


def _content_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    return [b for j, part in enumerate(content) if (b := _part_block(part, f"{where}.content[{j}]")) is not None]


_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")


def tool_use_id(call_id: Any) -> str:
    """Anthropic takes tool-use ids of letters, digits, _ and - only. A conversation that another
    model began may carry others (Kimi's "functions.read_file:0"), and a router switches models
    mid-conversation: such an id is rewritten, the same way in the call and in its result. A
    Gemini call's id carries its thought signature (`reasoning`), which is no use here: it goes."""
    call_id = split_signature(str(call_id or ""))[0]
    if _TOOL_USE_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha1(call_id.encode("utf-8")).hexdigest()[:12]
    return f"{re.sub(r'[^a-zA-Z0-9_-]', '_', call_id)[:40]}_{digest}"


def _unique_tool_use_ids(messages: list[dict[str, Any]]) -> None:
    """Anthropic refuses a history whose tool_use ids repeat ("tool_use ids must be unique"), and
    some models number their calls per turn (`call_0` each time; Kimi's `functions.read_file:0`).
    A repeated id gets a suffix, and each result answers the earliest call of its id still without
    one (two calls of one id in a turn are answered in order); the first use keeps its id (the
    cached prefix stays as it was)."""
    seen: set[str] = set()
    waiting: dict[str, list[str]] = {}
    for message in messages:
        for block in message["content"]:
            if block["type"] == "tool_use":
                given = unique = block["id"]
                n = 1
                while unique in seen:
                    n += 1
                    unique = f"{given}_{n}"
                seen.add(unique)
                block["id"] = unique
                waiting.setdefault(given, []).append(unique)
            elif block["type"] == "tool_result" and waiting.get(block["tool_use_id"]):
                block["tool_use_id"] = waiting[block["tool_use_id"]].pop(0)


def _message_blocks(message: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """(Anthropic's role, the blocks) of a turn. An assistant turn's `reasoning_content` (our own
    answer's thinking, replayed) is left out: Anthropic takes thinking back only as the signed
    blocks it sent, and as text it would read as something the model had said."""
    role = message.get("role")
    if role == "tool":
        blocks = [{"type": "tool_result", "tool_use_id": tool_use_id(message.get("tool_call_id")),
                   "content": content_text(message.get("content"))}]
    else:
        blocks = _content_blocks(message.get("content"), where)
    if role == "assistant":
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            blocks.append({"type": "tool_use", "id": tool_use_id(call.get("id")), "name": fn.get("name", ""), "input": tool_arguments(fn.get("arguments"))})
    if blocks and isinstance(message.get("cache_control"), dict):  # a breakpoint on the whole message: after its last block
        blocks[-1].setdefault("cache_control", message["cache_control"])
    return ("assistant" if role == "assistant" else "user"), blocks


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        result: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name", "")}
    else:
        raise UpstreamError("bad_request", f"unsupported tool_choice {choice!r}")
    if result is not None and parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


# Models before Claude 3.7 have no extended thinking.
_NO_THINKING = re.compile(r"claude-(?:instant|2|3-(?:5-|opus|sonnet|haiku))")
MIN_THINKING_BUDGET = 1024


def _thinking(model: ModelSpec, body: dict[str, Any], payload: dict[str, Any]) -> None:
    """reasoning_effort as an extended-thinking budget, where the Messages API allows one. The
    budget counts within max_tokens (as OpenAI's reasoning tokens count within
    max_completion_tokens), and half of max_tokens at most is spent on thinking. Not sent: with a
    forced tool choice (refused with thinking), in a tool-use loop (the loop's assistant turn
    would have to start with its signed thinking block, which OpenAI clients do not replay), or
    under a max_tokens too small for Anthropic's least budget. With thinking on, temperature and
    top_p are left out: Anthropic refuses thinking with either changed."""
    effort = reasoning_effort(body)
    if effort in (None, "none") or _NO_THINKING.search(model.upstream_name):
        return
    if (payload.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return
    assistant = next((m for m in reversed(payload["messages"]) if m["role"] == "assistant"), None)
    if assistant is not None and (assistant is payload["messages"][-1] or any(b["type"] == "tool_use" for b in assistant["content"])):
        return
    budget = min(THINKING_BUDGETS[effort], payload["max_tokens"] // 2)
    if budget < MIN_THINKING_BUDGET:
        return
    payload["thinking"] = {"type": "enabled", "budget_tokens": budget}
    payload.pop("temperature", None)
    payload.pop("top_p", None)


def _conversation(body: dict[str, Any]) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """(the system turns' texts and cache marks, the alternating messages), in the shape the
    Messages API takes (`conversation_shape`)."""
    system: list[tuple[str, Any]] = []
    messages: list[dict[str, Any]] = []
    last = last_turn(body)
    for i, message in enumerate(body.get("messages") or []):
        if message.get("role") in ("system", "developer"):
            system.extend(system_pieces(message))
            continue
        role, blocks = _message_blocks(message, f"messages[{i}]")
        if not blocks and role == "user" and i == last and not (messages and messages[-1]["role"] == "user"):
            blocks = [{"type": "text", "text": OPENING_USER_TEXT}]  # dropped, the assistant's turn would be a prefill
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    if not messages and (opening := system_blocks(system)):
        return [], [{"role": "user", "content": opening}]
    if messages and messages[0]["role"] == "assistant":
        messages.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_USER_TEXT}]})
    _unique_tool_use_ids(messages)
    return system, messages


def _tools(body: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(the tools, the tool choice): the client's, or for a history with tool calls or results and
    no tools, those it called by name with the choice `none` (`conversation_shape`)."""
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            **({"cache_control": t["cache_control"]} if isinstance(t.get("cache_control"), dict) else {}),
        }
        for t in body.get("tools") or []
        if t.get("type", "function") == "function"
    ]
    if tools:
        return tools, _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    blocks = [b for m in messages for b in m["content"]]
    if not any(b["type"] in ("tool_use", "tool_result") for b in blocks):
        return [], None
    names = history_tool_names((b["name"] for b in blocks if b["type"] == "tool_use"), FUNCTION_NAME)
    declared = [{"name": n, "description": HISTORY_TOOL_DESCRIPTION, "input_schema": {"type": "object"}} for n in names]
    return declared, {"type": "none"}


def to_anthropic(model: ModelSpec, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat body."""
    if wants_logprobs(body):
        raise refuse_logprobs("Anthropic")
    system, messages = _conversation(body)
    fmt = (body.get("response_format") or {}).get("type")
    if fmt == "json_object":
        system.append((JSON_INSTRUCTION, None))
    elif fmt == "json_schema":
        schema = (body["response_format"].get("json_schema") or {}).get("schema")
        system.append((f"{JSON_INSTRUCTION} It must match this JSON schema: {json.dumps(schema)}", None))
    payload: dict[str, Any] = {"model": model.upstream_name, "messages": messages}
    if blocks := system_blocks(system):
        payload["system"] = blocks
    # Anthropic takes temperature in [0, 1] (OpenAI: [0, 2]), and recent models refuse
    # temperature and top_p together: the temperature is kept, as the stronger request.
    if body.get("temperature") is not None:
        payload["temperature"] = min(float(body["temperature"]), 1.0)
    elif body.get("top_p") is not None:
        payload["top_p"] = body["top_p"]
    stop = body.get("stop")
    # Anthropic refuses a stop sequence of white space alone ("\n", ""), which OpenAI takes: such
    # a sequence is not sent, and the answer may go on past it.
    if stops := [s for s in ([stop] if isinstance(stop, str) else stop or []) if isinstance(s, str) and s.strip()]:
        payload["stop_sequences"] = stops
    tools, choice = _tools(body, messages)
    if tools:
        payload["tools"] = tools
        if choice is not None:
            payload["tool_choice"] = choice
    if body.get("user"):
        payload["metadata"] = {"user_id": str(body["user"])}
    payload["max_tokens"] = output_limit(model, body) or _default_max_tokens(model, payload)
    _thinking(model, body, payload)
    mark_cache_breakpoints(payload)
    if stream:
        payload["stream"] = True
    return payload


# The least default max_tokens: where the estimate leaves less room, Anthropic's own count decides
# (over the window it answers "exceed context limit", a context_length error that a routed request
# fails over on), never an answer cut after a few tokens and billed.
MIN_DEFAULT_MAX_TOKENS = 1024


def _default_max_tokens(model: ModelSpec, payload: dict[str, Any]) -> int:
    """Anthropic needs max_tokens: the model's output limit, but never more than the window leaves
    beside the prompt (input + max_tokens over the window is refused outright), nor less than
    MIN_DEFAULT_MAX_TOKENS."""
    room = model.context_window - input_tokens(payload)
    return min(model.max_output_tokens, max(room, MIN_DEFAULT_MAX_TOKENS))


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI usage for Anthropic's. Tokens read from the prompt cache and written to it are
    prompt tokens too (Anthropic's `input_tokens` counts only the rest); the reads are told as
    OpenAI tells its own (`cached_tokens`), the writes as OpenRouter does (`cache_write_tokens`)."""
    read, written = (as_int(usage.get(k), k) for k in ("cache_read_input_tokens", "cache_creation_input_tokens"))
    # A count left out stays None, for the gateway to estimate: an answer without usage had been billed at 0.
    fresh, output = (as_count(usage.get(k), k) for k in ("input_tokens", "output_tokens"))
    prompt = None if fresh is None else fresh + read + written
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": output,
                              "total_tokens": None if prompt is None or output is None else prompt + output}
    details = {k: v for k, v in (("cached_tokens", read), ("cache_write_tokens", written)) if v}
    if details:
        result["prompt_tokens_details"] = details
    return result


def _finish_reason(stop_reason: Any, has_calls: bool = False) -> str:
    """OpenAI's finish_reason for Anthropic's stop_reason; none given: a tool call's, or "stop"."""
    reason = as_text(stop_reason, "stop_reason")
    if not reason and has_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def from_anthropic(model: ModelSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat.completion for a Messages API response."""
    blocks = result.get("content")
    if not isinstance(blocks, list):
        raise UpstreamError("malformed", "Messages response has no content list")
    blocks = [as_object(b, "a content block") for b in blocks]
    text = "".join(as_text(b.get("text"), "a text block's text") for b in blocks if b.get("type") == "text")
    # A redacted_thinking block holds encrypted data, and a signature is no text: neither is passed on.
    thinking = "".join(as_text(b.get("thinking"), "a thinking block's thinking") for b in blocks if b.get("type") == "thinking")
    tool_calls = [
        {"id": b.get("id", ""), "type": "function", "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})}}
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    answer = completion(result.get("id"), model.name, text, tool_calls,
                        finish_reason=_finish_reason(result.get("stop_reason"), bool(tool_calls)),
                        usage=_usage(as_object(result.get("usage"), "usage")))
    if thinking:
        answer["choices"][0]["message"]["reasoning_content"] = thinking
    return answer


class AnthropicProvider(Provider):
    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/messages" if self.base_url.endswith("/v1") else f"{self.base_url}/v1/messages"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        key = self.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    async def complete(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        result = await self._post_json(self.messages_url, to_anthropic(model, body, stream=False), self._headers())
        if not isinstance(result, dict):
            raise UpstreamError("malformed", "Messages response is not a JSON object")
        # A proxy in front of Anthropic may answer `{"error": ...}` without Anthropic's `type`.
        if result.get("type") == "error" or "error" in result:
            raise error_in_body(result, self._secrets())
        return from_anthropic(model, result)

    async def stream(self, model: ModelSpec, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        secrets = self._secrets()
        head = stream_head(model.name)
        tool_index: dict[int, int] = {}  # Anthropic content-block index → OpenAI tool_calls index
        no_arguments_yet: set[int] = set()  # tool calls whose input has not streamed a character yet
        produced = False  # any text, thinking or tool call so far
        counts: dict[str, Any] = {}  # Anthropic's usage: message_start's, updated by message_delta's
        usage = _usage(counts)  # read as each arrives: a count of the wrong type is a malformed answer now

        payload = to_anthropic(model, body, stream=True)
        async for event_name, data in self._sse_events(self.messages_url, payload, self._headers()):
            event = parse_json_event(data, secrets)
            kind = event.get("type", event_name)
            if kind == "message_start":
                message = as_object(event.get("message"), "message_start's message")
                head["id"] = message.get("id") or head["id"]
                counts = dict(as_object(message.get("usage"), "usage"))
                usage = _usage(counts)
                start = chunk(head, {"role": "assistant", "content": ""})
                if usage["prompt_tokens"]:  # a proxy that counts nothing here leaves the prompt to the estimate
                    start["usage"] = prompt_usage(usage)
                yield start
            elif kind == "content_block_start":
                block = as_object(event.get("content_block"), "content_block")
                if block.get("type") == "tool_use":
                    idx = tool_index[as_int(event.get("index"), "index")] = len(tool_index)
                    call = {"index": idx, "id": block.get("id", ""), "type": "function", "function": {"name": block.get("name", ""), "arguments": ""}}
                    no_arguments_yet.add(idx)
                    produced = True
                    yield chunk(head, {"tool_calls": [call]})
                elif block.get("type") == "text" and block.get("text"):
                    produced = True
                    yield chunk(head, {"content": as_text(block["text"], "a text block's text")})
                elif block.get("type") == "thinking" and block.get("thinking"):
                    produced = True
                    yield chunk(head, {"reasoning_content": as_text(block["thinking"], "a thinking block's thinking")})
            elif kind == "content_block_delta":
                delta = as_object(event.get("delta"), "content_block_delta's delta")
                if delta.get("type") == "text_delta":
                    produced = produced or bool(delta.get("text"))
                    yield chunk(head, {"content": as_text(delta.get("text"), "a text_delta's text")})
                elif delta.get("type") == "thinking_delta":
                    # Passed on as it comes: a long think would otherwise leave the client (and an
                    # idle timeout between them) with no byte for minutes. signature_delta is dropped.
                    thought = as_text(delta.get("thinking"), "a thinking_delta's thinking")
                    if thought:
                        produced = True
                        yield chunk(head, {"reasoning_content": thought})
                elif delta.get("type") == "input_json_delta":
                    idx = tool_index.get(as_int(event.get("index"), "index"))
                    if idx is None:
                        raise UpstreamError("malformed", "input_json_delta for a block that is not a tool_use")
                    partial = as_text(delta.get("partial_json"), "partial_json")
                    if partial:
                        no_arguments_yet.discard(idx)
                        yield chunk(head, {"tool_calls": [{"index": idx, "function": {"arguments": partial}}]})
            elif kind == "content_block_stop":
                idx = tool_index.get(as_int(event.get("index"), "index"))
                if idx in no_arguments_yet:
                    # A tool without input streams no JSON at all; OpenAI clients parse the
                    # arguments, and "" is not JSON (the non-streamed answer says "{}").
                    no_arguments_yet.discard(idx)
                    yield chunk(head, {"tool_calls": [{"index": idx, "function": {"arguments": "{}"}}]})
            elif kind == "message_delta":
                counts.update((k, v) for k, v in as_object(event.get("usage"), "usage").items() if v)
                usage = _usage(counts)
                stop = as_object(event.get("delta"), "message_delta's delta").get("stop_reason")
                if stop:
                    yield chunk(head, {}, _finish_reason(stop))
                    # The usage here is final (only message_stop follows): the answer ends now, and
                    # a connection lost before message_stop still bills the upstream's own counts.
                    yield usage_chunk(head, usage)
                    return
            elif kind == "message_stop":
                if produced:  # Anthropic's explicit end, no stop_reason given: finished, as unstreamed
                    yield chunk(head, {}, _finish_reason(None, bool(tool_index)))
                yield usage_chunk(head, usage)
                return
            elif kind == "error":
                raise error_in_body(event, secrets)
        raise UpstreamError("connection", "Messages stream ended before message_stop")
