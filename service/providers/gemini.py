"""Google Gemini adapter: OpenAI chat body → generateContent / streamGenerateContent?alt=sse.

Translated both ways: system prompt → `systemInstruction`, assistant → role `model`, tool
definitions → `functionDeclarations` (JSON-Schema keys Gemini rejects removed), assistant
tool_calls ↔ `functionCall` parts, `role: "tool"` turns → `functionResponse` parts (Gemini
matches results by function name, recovered from the earlier call's id), tool_choice →
`functionCallingConfig`, response_format → `responseMimeType`, usage (`usageMetadata`),
finish reasons and errors (`RESOURCE_EXHAUSTED`, `retryDelay`).
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, AsyncIterator

from router.config import ModelSpec
from router.request_view import content_text
from service.providers.answer_fields import as_int, as_list, as_object, as_text
from service.providers.base import Provider, UpstreamError, error_in_body, output_limit, parse_json_event, tool_arguments

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

# Gemini's schema dialect is an OpenAPI 3.0 subset (the `Schema` of the Gemini API reference): any
# other keyword ("const", "oneOf", "additionalProperties", "$schema", "exclusiveMinimum", ...) makes
# it refuse the whole request with a 400, so only these are sent.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "default", "example", "items", "properties",
    "required", "propertyOrdering", "anyOf", "minItems", "maxItems", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "minProperties", "maxProperties",
})


MAX_SCHEMA_DEPTH = 128  # levels once `$ref`s are inlined; deeper is the request's fault, not a RecursionError


def clean_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """The schema in Gemini's dialect: `$ref`s to the schema's own `$defs` / `definitions` inlined
    (Gemini has no references), `allOf` merged, `oneOf` read as `anyOf`, a type list such as
    `["string", "null"]` written as one type and `nullable`, `const` and non-string enums (Gemini's
    enums are strings) kept as a string enum or told in the description, any other keyword dropped.
    Property *names* are data, not keywords: a parameter called `strict` stays."""
    if depth > MAX_SCHEMA_DEPTH:
        raise UpstreamError("bad_request", f"a schema nests deeper than {MAX_SCHEMA_DEPTH} levels once its $refs are inlined "
                            "(Gemini takes no references)")
    if isinstance(schema, list):
        return [clean_schema(v, defs, depth + 1) for v in schema]
    if not isinstance(schema, dict):
        return schema
    defs = {**(defs or {}), **(schema.get("$defs") or {}), **(schema.get("definitions") or {})}
    inlined, below = _inlined(schema, defs)
    if inlined is not schema:
        return clean_schema(inlined, below, depth + 1)
    schema, defs = _merged_all_of(schema, defs)
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "oneOf":
            k = "anyOf"
        if k not in _SCHEMA_KEYS:
            continue
        if k == "properties" and isinstance(v, dict):
            # `false` allows no value: a property that can never be sent is left out.
            out[k] = {name: clean_schema(_as_schema(prop), defs, depth + 1) for name, prop in v.items() if prop is not False}
        elif k == "items" and isinstance(v, list):  # a tuple: Gemini has none, its first item's type stands
            out[k] = clean_schema(_as_schema(v[0]), defs, depth + 1) if v else {}
        elif k == "items":
            out[k] = clean_schema(_as_schema(v), defs, depth + 1)
        elif k == "anyOf" and isinstance(v, list):
            out[k] = [clean_schema(_as_schema(option), defs, depth + 1) for option in v if option is not False]
        else:
            out[k] = clean_schema(v, defs, depth + 1)
    _one_type(out)
    _string_enum(out, schema.get("const", _ABSENT))
    return out


_ABSENT = object()


def _inlined(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `$ref` to one of the schema's own definitions, replaced by it (the node's other keywords
    kept over it), and the definitions left to inline below it: a model that refers to itself is
    inlined once, not forever. Any other node as it is."""
    ref = schema.get("$ref")
    name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None
    if name not in defs:
        return schema, defs
    target = defs[name]
    rest = {k: v for k, v in schema.items() if k != "$ref"}
    body = target if isinstance(target, dict) else {}  # `true`: any value, Gemini's empty schema
    return {**body, **rest}, {k: v for k, v in defs.items() if v is not target}


def _as_schema(value: Any) -> Any:
    """A subschema in Gemini's terms: JSON Schema's `true` (any value, as Rust's schemars writes
    an any-JSON field) is an empty schema, which Gemini reads the same way."""
    return {} if value is True else value


def _merged_all_of(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`allOf` folded into the schema; a part that is a `$ref` (the usual form of a described
    sub-model: `{"allOf": [{"$ref": ...}], "description": ...}`) is its definition (`_inlined`).
    Returns the definitions left to inline below it."""
    parts = schema.get("allOf")
    if not isinstance(parts, list):
        return schema, defs
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        if not isinstance(part, dict):
            continue
        part, defs = _merged_all_of(*_inlined(part, defs))
        for k, v in part.items():
            if k == "properties" and isinstance(v, dict):
                props = dict(merged.get("properties") or {})
                for name, prop in v.items():
                    props.setdefault(name, prop)
                merged["properties"] = props
            elif k == "required" and isinstance(v, list):
                merged["required"] = list(dict.fromkeys([*(merged.get("required") or []), *v]))
            else:
                merged.setdefault(k, v)
    return merged, defs


def _one_type(out: dict[str, Any]) -> None:
    types = out.get("type")
    if not isinstance(types, list):
        return
    named = [t for t in types if t != "null"]
    if "null" in types:
        out["nullable"] = True
    if len(named) == 1:
        out["type"] = named[0]
    else:
        del out["type"]
        if named:
            out["anyOf"] = [{"type": t} for t in named]


def _string_enum(out: dict[str, Any], const: Any) -> None:
    values = [const] if const is not _ABSENT else out.get("enum")
    if not isinstance(values, list):
        return
    if None in values:
        out["nullable"] = True
        values = [v for v in values if v is not None]
    if not values:
        out.pop("enum", None)
        return
    if all(isinstance(v, str) for v in values):
        out["enum"] = values
        out.setdefault("type", "string")
        return
    out.pop("enum", None)
    told = ", ".join(json.dumps(v) for v in values)
    out["description"] = f"{out.get('description', '')} (one of: {told})".strip()


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    # Gemini rejects an empty text part ("empty text parameter", a 400), so none is sent.
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = part["image_url"]["url"]  # shape checked by service/schemas.py
            if url.startswith("data:"):
                header, _, data = url.partition(",")
                parts.append({"inlineData": {"mimeType": header[5:].split(";")[0] or "image/png", "data": data}})
            else:
                parts.append({"fileData": {"mimeType": "image/jpeg", "fileUri": url}})
        elif isinstance(part, dict) and part.get("type") == "text" and str(part.get("text", "")).strip():
            parts.append({"text": str(part["text"])})
        elif isinstance(part, str) and part.strip():
            parts.append({"text": part})
    return parts


def _tool_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    text = content_text(message.get("content"))
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"content": text}
    call_id = str(message.get("tool_call_id", ""))
    name = message.get("name") or names.get(call_id, "")
    return {"functionResponse": {"name": name, "response": response}}


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"functionCallingConfig": {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name", "")]}}
    raise UpstreamError("bad_request", f"unsupported tool_choice {choice!r}")


def to_gemini(model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent request for an OpenAI chat body."""
    system_parts: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for message in body.get("messages") or []:
        role = message.get("role")
        if role in ("system", "developer"):
            system_parts.append(content_text(message.get("content")))
            continue
        if role == "tool":
            g_role, parts = "user", [_tool_response(message, call_names)]
        elif role == "assistant":
            g_role, parts = "model", _parts(message.get("content"))
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                call_names[str(call.get("id", ""))] = fn.get("name", "")
                parts.append({"functionCall": {"name": fn.get("name", ""), "args": tool_arguments(fn.get("arguments"))}})
        else:
            g_role, parts = "user", _parts(message.get("content"))
        if not parts:
            continue
        if contents and contents[-1]["role"] == g_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": g_role, "parts": parts})
    payload: dict[str, Any] = {"contents": contents}
    if system_parts:
        payload["systemInstruction"] = {"parts": [{"text": "\n\n".join(p for p in system_parts if p)}]}
    config: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(src) is not None:
            config[dst] = body[src]
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
    meta = as_object(metadata, "usageMetadata")
    count = {k: as_int(meta.get(k), k) for k in
             ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "totalTokenCount", "cachedContentTokenCount")}
    prompt = count["promptTokenCount"]
    completion = count["candidatesTokenCount"] + count["thoughtsTokenCount"]
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": count["totalTokenCount"] or prompt + completion}
    if count["cachedContentTokenCount"]:
        usage["prompt_tokens_details"] = {"cached_tokens": count["cachedContentTokenCount"]}
    return usage


def _finish(reason: str | None, has_calls: bool) -> str | None:
    if reason is None:
        return None
    if has_calls and reason == "STOP":
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def _candidate_parts(result: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    candidates = as_list(result.get("candidates"), "candidates")
    if not candidates:
        if as_object(result.get("promptFeedback"), "promptFeedback").get("blockReason"):
            return [], "SAFETY"
        return [], None
    first = as_object(candidates[0], "a candidate")
    parts = as_list(as_object(first.get("content"), "a candidate's content").get("parts"), "parts")
    return [as_object(p, "a content part") for p in parts], as_text(first.get("finishReason"), "finishReason") or None


def _text(part: dict[str, Any]) -> str:
    """The answer's text in a part; a thought summary is not the answer."""
    return "" if part.get("thought") else as_text(part.get("text"), "a part's text")


def _function_call(part: dict[str, Any]) -> dict[str, Any]:
    return as_object(part["functionCall"], "a functionCall")


def from_gemini(model: ModelSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat.completion for a generateContent response."""
    parts, reason = _candidate_parts(result)
    if not parts and reason is None:
        raise UpstreamError("malformed", "generateContent response has no candidates")
    text = "".join(_text(p) for p in parts)
    calls = [_function_call(p) for p in parts if "functionCall" in p]
    if reason in FAILED_FINISH and not text and not calls:
        raise _failed(reason)
    tool_calls = [
        {"id": _call_id(c.get("name", ""), c.get("args"), i, c.get("id"), result.get("responseId")), "type": "function",
         "function": {"name": c.get("name", ""), "arguments": json.dumps(c.get("args") or {})}}
        for i, c in enumerate(calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": result.get("responseId") or f"chatcmpl-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model.name,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(reason or "STOP", bool(tool_calls))}],
        "usage": _usage(result.get("usageMetadata")),
    }


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
        chunk_id = f"chatcmpl-{int(time.time() * 1000)}"
        created = int(time.time())
        n_calls = 0
        response_id: str | None = None  # salts the ids of calls Gemini leaves unnamed
        usage: dict[str, int] | None = None
        finish: str | None = None
        started = False
        produced = False  # any text or tool call so far

        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {
                "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        url = self._url(model, "streamGenerateContent") + "?alt=sse"
        async for _, data in self._sse_events(url, to_gemini(model, body), self._headers()):
            event = parse_json_event(data, secrets)
            if not isinstance(event, dict):
                raise UpstreamError("malformed", "stream event is not a JSON object")
            if "error" in event:
                raise error_in_body(event, secrets)
            parts, reason = _candidate_parts(event)
            chunk_id = event.get("responseId") or chunk_id
            response_id = response_id or event.get("responseId") or uuid.uuid4().hex
            if not started:
                started = True
                yield chunk({"role": "assistant", "content": ""})
            for part in parts:
                if text := _text(part):
                    produced = True
                    yield chunk({"content": text})
                elif "functionCall" in part:
                    call = _function_call(part)
                    yield chunk({"tool_calls": [{
                        "index": n_calls, "id": _call_id(call.get("name", ""), call.get("args"), n_calls, call.get("id"), response_id),
                        "type": "function",
                        "function": {"name": call.get("name", ""), "arguments": json.dumps(call.get("args") or {})},
                    }]})
                    n_calls += 1
                    produced = True
            if reason in FAILED_FINISH and not produced:
                raise _failed(reason)  # before the finish chunk, which would commit an empty answer
            if event.get("usageMetadata"):
                usage = _usage(event["usageMetadata"])
            if reason and finish is None:
                finish = _finish(reason, n_calls > 0)
                yield chunk({}, finish)
        if finish is None:
            raise UpstreamError("connection", "Gemini stream ended before a finishReason")
        if usage is not None:
            final = chunk({})
            final["choices"] = []
            final["usage"] = usage
            yield final
