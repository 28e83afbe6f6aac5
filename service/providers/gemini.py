"""Google Gemini adapter: OpenAI chat body → generateContent / streamGenerateContent?alt=sse.

Translated both ways: system prompt → `systemInstruction`, assistant → role `model`, images,
files and audio → `inlineData`, tool definitions → `functionDeclarations` (in Gemini's schema
dialect, `gemini_schema`), assistant tool_calls ↔ `functionCall` parts (with their thought
signatures, carried in the call ids), `role: "tool"` turns → `functionResponse` parts (Gemini
matches results by function name, recovered from the earlier call's id), tool_choice →
`functionCallingConfig`, response_format → `responseMimeType`, reasoning_effort →
`thinkingConfig`, logprobs ↔ `logprobsResult`, usage (`usageMetadata`), finish reasons and
errors (`RESOURCE_EXHAUSTED`, `retryDelay`). Conversation shapes Gemini refuses are sent as
`conversation_shape` says.
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any, AsyncIterator

from router.config import ModelSpec
from router.request_view import content_text, IMAGE_PART_TYPES, wants_logprobs
from service.providers import attachments
from service.providers.answer_fields import as_count, as_list, as_object, as_text
from service.providers.base import Provider, UpstreamError, error_in_body, output_limit, tool_arguments
from service.providers.conversation_shape import HISTORY_TOOL_DESCRIPTION, OPENING_USER_TEXT, history_tool_names, last_turn
from service.providers.envelope import chunk, completion, parse_json_event, prompt_usage, stream_head, usage_chunk
from service.providers.gemini_schema import clean_schema
from service.providers.reasoning import THINKING_BUDGETS, id_with_signature, reasoning_effort, split_signature

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# Finish reasons that mean the model failed to answer (a tool call it could not write, ...):
# with nothing produced, an error to retry or fail over on, never an empty "stop".
FAILED_FINISH = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER",
                           "FINISH_REASON_UNSPECIFIED"})


def _failed(reason: str) -> UpstreamError:
    return UpstreamError("malformed", f"Gemini finished without an answer ({reason})")


def _part(part: Any, where: str) -> dict[str, Any] | None:
    if isinstance(part, str):
        return {"text": part} if part.strip() else None
    if not isinstance(part, dict):
        return None
    text = attachments.part_text(part)
    if text is not None:
        # Gemini rejects an empty text part ("empty text parameter", a 400), so none is sent.
        return {"text": text} if text.strip() else None
    kind = part.get("type")
    if kind in IMAGE_PART_TYPES:
        url = attachments.image_url(part, where, "Gemini")
        if url.startswith("data:"):
            mime_type, data = attachments.split_data_url(url, "image/png")
            return {"inlineData": {"mimeType": mime_type, "data": data}}
        # Gemini reads the file as the type declared: the URL's extension names it, where it has one it knows.
        return {"fileData": {"mimeType": attachments.url_image_type(url) or "image/jpeg", "fileUri": url}}
    if kind == "file":
        inline = attachments.file_part(part, where, "Gemini")
    elif kind == "input_audio":
        inline = attachments.audio_part(part, where)
    else:
        raise attachments.unknown_part(where, kind, "Gemini")
    return {"inlineData": {"mimeType": inline.mime_type, "data": inline.data}}


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    return [p for j, part in enumerate(content) if (p := _part(part, f"{where}.content[{j}]")) is not None]


def _tool_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    text = content_text(message.get("content"))
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"content": text}
    call_id = str(message.get("tool_call_id", ""))
    name = message.get("name") or names.get(split_signature(call_id)[0], "")
    return {"functionResponse": {"name": name, "response": response}}


# Gemini's rule for a function's name.
FUNCTION_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"functionCallingConfig": {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name", "")]}}
    raise UpstreamError("bad_request", f"unsupported tool_choice {choice!r}")


def _version(model: ModelSpec) -> tuple[int, int] | None:
    """The Gemini version an upstream id names (gemini-2.5-flash: (2, 5)); None for an alias."""
    found = re.search(r"gemini-(\d+)(?:\.(\d+))?", model.upstream_name)
    return (int(found[1]), int(found[2] or 0)) if found else None


# Google's documented signature for a function call Gemini did not make (another model's, in a
# conversation a router moved here): Gemini 3 skips the check it would otherwise fail with a 400.
FOREIGN_CALL_SIGNATURE = "skip_thought_signature_validator"


def _sign_current_turn(contents: list[dict[str, Any]]) -> None:
    """Gemini 3 checks only the current turn (the contents after the last user content that is not
    only function responses): the first functionCall of each model step there needs a signature.
    Earlier versions ask for none, so they are sent none they did not make."""
    for content in reversed(contents):
        if content["role"] == "user":
            if any("functionResponse" not in p for p in content["parts"]):
                return
            continue
        calls = [p for p in content["parts"] if "functionCall" in p]
        if calls and "thoughtSignature" not in calls[0]:
            calls[0]["thoughtSignature"] = FOREIGN_CALL_SIGNATURE


def _contents(model: ModelSpec, body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(the system texts, the conversation as Gemini contents)."""
    system_parts: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    last = last_turn(body)
    for i, message in enumerate(body.get("messages") or []):
        role, where = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system_parts.append(content_text(message.get("content")))
            continue
        if role == "tool":
            g_role, parts = "user", [_tool_response(message, call_names)]
        elif role == "assistant":
            g_role, parts = "model", _parts(message.get("content"), where)
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                call_id = str(call.get("id", ""))
                base_id, signature = split_signature(call_id)
                # By the id without its signature: a result may come back under either (a client that shortens ids).
                call_names[base_id] = fn.get("name", "")
                part: dict[str, Any] = {"functionCall": {"name": fn.get("name", ""), "args": tool_arguments(fn.get("arguments"))}}
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
        else:
            g_role, parts = "user", _parts(message.get("content"), where)
        if not parts and g_role == "user" and i == last and not (contents and contents[-1]["role"] == "user"):
            parts = [{"text": OPENING_USER_TEXT}]  # a blank last turn dropped would leave the model's turn last (`conversation_shape`)
        if not parts:
            continue
        if contents and contents[-1]["role"] == g_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": g_role, "parts": parts})
    # The shapes Gemini refuses (`conversation_shape`): no contents, a conversation the model opens.
    if not contents and any(system_parts):
        contents, system_parts = [{"role": "user", "parts": [{"text": "\n\n".join(p for p in system_parts if p)}]}], []
    elif contents and contents[0]["role"] == "model":
        contents.insert(0, {"role": "user", "parts": [{"text": OPENING_USER_TEXT}]})
    version = _version(model)
    if version is None or version >= (3, 0):  # an alias may name a Gemini 3
        _sign_current_turn(contents)
    return system_parts, contents


# Gemini 2.5's image and speech models take no thinkingConfig ("Thinking is not enabled for this
# model"); Gemini 3's image model thinks.
_NO_THINKING = re.compile(r"gemini-2\.5-.*-(?:image|tts)\b")


GEMINI3_HIGH_FROM = 8192  # the least output limit Gemini 3's default thinking is left with


def _least_budget(model: ModelSpec) -> tuple[int, bool]:
    """(the least thinking budget a Gemini 2.5 model takes, whether 0 turns its thinking off)."""
    if "-flash-lite" in model.upstream_name:
        return 512, True
    if "-pro" in model.upstream_name:
        return 128, False
    return 1, True


def _thinking_config(model: ModelSpec, effort: str | None, max_tokens: int | None) -> dict[str, Any] | None:
    """reasoning_effort as Gemini takes it: a thinking level from Gemini 3 on (low and high are the
    levels every Gemini 3 model has), a token budget on 2.5. Older models do not think, and an
    alias names no version. Gemini counts thoughts within maxOutputTokens, so, as for Anthropic,
    half of the output limit at most goes to thinking; below a model's least budget thinking is
    off (0), and 2.5 Pro, which cannot stop thinking, gets its least (128), which is less than its
    default (dynamic) thinking would take. Without an effort the model's own thinking is left alone
    unless the output limit is small: left to itself it may spend a small limit on thoughts alone
    and answer nothing (finish reason MAX_TOKENS, no text)."""
    version = _version(model)
    if version is None or version < (2, 5) or _NO_THINKING.search(model.upstream_name):
        return None
    if effort is None:
        if not max_tokens:
            return None
        if version >= (3, 0):
            # Gemini 3 takes a level, not a budget: its default (high) has spent a 4,096-token limit
            # on thoughts alone; an agent's 8,192 keeps it.
            return {"thinkingLevel": "low"} if max_tokens < GEMINI3_HIGH_FROM else None
        # 2.5 Flash-Lite does not think unless asked to; a large limit leaves room for any thinking.
        if "-flash-lite" in model.upstream_name or max_tokens // 2 >= THINKING_BUDGETS["high"]:
            return None
        budget = max_tokens // 2
    elif version >= (3, 0):
        return {"thinkingLevel": "high" if effort in ("medium", "high", "xhigh") else "low"}
    else:
        budget = 0 if effort == "none" else THINKING_BUDGETS[effort]
        if max_tokens:
            budget = min(budget, max_tokens // 2)
    least, can_stop = _least_budget(model)
    if budget < least:
        budget = 0 if can_stop else least
    return {"thinkingBudget": budget}


def _generation_config(model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(src) is not None:
            config[dst] = body[src]
    # presence_penalty and frequency_penalty are not sent: most Gemini models (1.0, 1.5 but its -002
    # versions, 2.5) answer a penalty with a 400, "Penalty is not enabled for models/...", and which
    # ones take it is documented nowhere.
    max_tokens = output_limit(model, body)
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            config["responseSchema"] = clean_schema(schema)
    # A model without log probabilities refuses them with a 400 that names it ("Logprobs is not
    # enabled for models/..."), which the client gets: never an answer without the logprobs asked for.
    if wants_logprobs(body):
        config["responseLogprobs"] = True
        if body.get("top_logprobs"):
            config["logprobs"] = body["top_logprobs"]
    thinking = _thinking_config(model, reasoning_effort(body), max_tokens)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


def to_gemini(model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent request for an OpenAI chat body."""
    system_parts, contents = _contents(model, body)
    payload: dict[str, Any] = {"contents": contents}
    if system_parts:
        payload["systemInstruction"] = {"parts": [{"text": "\n\n".join(p for p in system_parts if p)}]}
    config = _generation_config(model, body)
    if config:
        payload["generationConfig"] = config
    if body.get("tools"):
        payload["tools"] = [{
            "functionDeclarations": [
                {
                    "name": t["function"]["name"],
                    "description": t["function"].get("description", ""),
                    **({"parameters": clean_schema(t["function"]["parameters"])} if t["function"].get("parameters") else {}),
                }
                for t in body["tools"]
                if t.get("type", "function") == "function"
            ]
        }]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config:
            payload["toolConfig"] = tool_config
    elif any("functionCall" in p or "functionResponse" in p for c in contents for p in c["parts"]):
        # A tool history without tools (`conversation_shape`): the functions it called, declared
        # by name, and mode NONE, so the answer is text.
        called = (p.get("functionCall", p.get("functionResponse"))["name"] for c in contents for p in c["parts"]
                  if "functionCall" in p or "functionResponse" in p)
        payload["tools"] = [{"functionDeclarations": [{"name": n, "description": HISTORY_TOOL_DESCRIPTION}
                                                      for n in history_tool_names(called, FUNCTION_NAME)]}]
        payload["toolConfig"] = {"functionCallingConfig": {"mode": "NONE"}}
    return payload


def _call_id(name: str, args: Any, n: int, given: str | None, response_id: str | None) -> str:
    """Gemini only sometimes names its calls. The id is derived from the call and its response:
    stable for one answer, unique across turns (the same call made in two turns must not share
    an id: Anthropic refuses a conversation that repeats one, and routing may switch to it)."""
    if given:
        return given
    salt = response_id or uuid.uuid4().hex
    digest = hashlib.sha1(f"{salt}:{n}:{name}:{json.dumps(args, sort_keys=True)}".encode()).hexdigest()[:16]
    return f"call_{digest}"


def _usage(metadata: Any) -> dict[str, Any]:
    """OpenAI's usage for Gemini's. A count Gemini leaves out stays None (the gateway estimates it):
    an answer without usageMetadata, or with only a total, had been billed at 0."""
    meta = as_object(metadata, "usageMetadata")
    count = {k: as_count(meta.get(k), k) for k in
             ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "totalTokenCount", "cachedContentTokenCount")}
    prompt = count["promptTokenCount"]
    outputs = [c for c in (count["candidatesTokenCount"], count["thoughtsTokenCount"]) if c is not None]
    completion = sum(outputs) if outputs else None
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": count["totalTokenCount"] or (prompt + completion if prompt is not None
                                                                           and completion is not None else None)}
    if count["cachedContentTokenCount"]:
        usage["prompt_tokens_details"] = {"cached_tokens": count["cachedContentTokenCount"]}
    return usage


def _finish(reason: str | None, has_calls: bool) -> str | None:
    if reason is None:
        return None
    if has_calls and reason == "STOP":
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def _candidate(result: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None, dict[str, Any]]:
    """(the first candidate's parts, its finish reason, its logprobsResult)."""
    candidates = as_list(result.get("candidates"), "candidates")
    if not candidates:
        if as_object(result.get("promptFeedback"), "promptFeedback").get("blockReason"):
            return [], "SAFETY", {}
        return [], None, {}
    first = as_object(candidates[0], "a candidate")
    parts = as_list(as_object(first.get("content"), "a candidate's content").get("parts"), "parts")
    return ([as_object(p, "a content part") for p in parts], as_text(first.get("finishReason"), "finishReason") or None,
            as_object(first.get("logprobsResult"), "logprobsResult"))


def _text(part: dict[str, Any]) -> str:
    """The answer's text in a part; a thought summary is not the answer."""
    return "" if part.get("thought") else as_text(part.get("text"), "a part's text")


def _tool_call(part: dict[str, Any], n: int, response_id: str | None) -> dict[str, Any]:
    """The OpenAI tool call for a functionCall part, its thought signature in the id."""
    call = as_object(part["functionCall"], "a functionCall")
    call_id = _call_id(call.get("name", ""), call.get("args"), n, call.get("id"), response_id)
    return {"id": id_with_signature(call_id, as_text(part.get("thoughtSignature"), "a thoughtSignature")), "type": "function",
            "function": {"name": call.get("name", ""), "arguments": json.dumps(call.get("args") or {})}}


def _token_logprob(candidate: Any) -> dict[str, Any]:
    found = as_object(candidate, "a logprobs candidate")
    token = as_text(found.get("token"), "a logprobs token")
    logprob = found.get("logProbability", 0.0)  # proto3 JSON leaves a 0.0 out
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
        raise UpstreamError("malformed", "a logProbability is not a number")
    return {"token": token, "logprob": float(logprob), "bytes": list(token.encode("utf-8"))}


def _logprobs(found: dict[str, Any]) -> dict[str, Any] | None:
    """Gemini's logprobsResult in OpenAI's shape: each chosen token with its log probability and
    the most likely tokens at that step."""
    if not found:
        return None
    top = as_list(found.get("topCandidates"), "topCandidates")
    content = []
    for i, chosen in enumerate(as_list(found.get("chosenCandidates"), "chosenCandidates")):
        step = as_object(top[i], "topCandidates") if i < len(top) else {}
        alternatives = as_list(step.get("candidates"), "topCandidates' candidates")
        content.append({**_token_logprob(chosen), "top_logprobs": [_token_logprob(c) for c in alternatives]})
    return {"content": content, "refusal": None}


def from_gemini(model: ModelSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat.completion for a generateContent response."""
    parts, reason, logprobs = _candidate(result)
    if not parts and reason is None:
        raise UpstreamError("malformed", "generateContent response has no candidates")
    text = "".join(_text(p) for p in parts)
    tool_calls = [_tool_call(p, i, result.get("responseId")) for i, p in enumerate(p for p in parts if "functionCall" in p)]
    if reason in FAILED_FINISH and not text and not tool_calls:
        raise _failed(reason)
    return completion(result.get("responseId"), model.name, text, tool_calls, logprobs=_logprobs(logprobs),
                      finish_reason=_finish(reason or "STOP", bool(tool_calls)), usage=_usage(result.get("usageMetadata")))


class GeminiProvider(Provider):
    def _url(self, model: ModelSpec, method: str) -> str:
        name = model.upstream_name
        name = name if name.startswith("models/") else f"models/{name}"
        return f"{self.base_url}/{name}:{method}"

    def _headers(self) -> dict[str, str]:
        key = self.api_key()
        return {"x-goog-api-key": key} if key else {}

    async def complete(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        result = await self._post_json(self._url(model, "generateContent"), to_gemini(model, body), self._headers())
        if not isinstance(result, dict):
            raise UpstreamError("malformed", "generateContent response is not a JSON object")
        if "error" in result:
            raise error_in_body(result, self._secrets())
        return from_gemini(model, result)

    async def stream(self, model: ModelSpec, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        secrets = self._secrets()
        head = stream_head(model.name)
        n_calls = 0
        response_id: str | None = None  # salts the ids of calls Gemini leaves unnamed
        usage: dict[str, int] | None = None
        finish: str | None = None
        started = False
        produced = False  # any text or tool call so far
        prompt_told = False

        url = self._url(model, "streamGenerateContent") + "?alt=sse"
        async for _, data in self._sse_events(url, to_gemini(model, body), self._headers()):
            event = parse_json_event(data, secrets)
            if "error" in event:
                raise error_in_body(event, secrets)
            parts, reason, found = _candidate(event)
            head["id"] = event.get("responseId") or head["id"]
            response_id = response_id or event.get("responseId") or uuid.uuid4().hex
            if not started:
                started = True
                yield chunk(head, {"role": "assistant", "content": ""})
            logprobs = _logprobs(found)  # the tokens of this event's text
            for part in parts:
                if text := _text(part):
                    produced = True
                    out = chunk(head, {"content": text})
                    if logprobs:
                        out["choices"][0]["logprobs"], logprobs = logprobs, None
                    yield out
                elif "functionCall" in part:
                    yield chunk(head, {"tool_calls": [{"index": n_calls, **_tool_call(part, n_calls, response_id)}]})
                    n_calls += 1
                    produced = True
            if logprobs:
                out = chunk(head, {})
                out["choices"][0]["logprobs"] = logprobs
                yield out
            if reason in FAILED_FINISH and not produced:
                raise _failed(reason)  # before the finish chunk, which would commit an empty answer
            if event.get("usageMetadata"):
                usage = _usage(event["usageMetadata"])
                if usage["prompt_tokens"] and not prompt_told:
                    prompt_told = True  # a cut stream is billed at Gemini's prompt count from here on
                    yield usage_chunk(head, prompt_usage(usage))
            if reason and finish is None:
                finish = _finish(reason, n_calls > 0)
                yield chunk(head, {}, finish)
        if finish is None:
            raise UpstreamError("connection", "Gemini stream ended before a finishReason")
        if usage is not None:
            yield usage_chunk(head, usage)
