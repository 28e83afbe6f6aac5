"""Request validation for the chat endpoint.

The schema checks what the router relies on (messages, roles, types of the fields it reads)
and allows every other field: the client's body is forwarded as sent, so a parameter we do
not know about (a new OpenAI field, a provider extension) still reaches the upstream.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Sequence

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, StringConstraints,
                      ValidationError, field_validator)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service import json_text
from service.errors import ApiError, bad_request, did_you_mean

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
Number = StrictFloat  # strict: an int is a number, "0.5" and true are not


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CalledFunction(_Open):
    """A function call an assistant turn replays: adapters read its name and arguments."""

    name: StrictStr | None = None
    arguments: StrictStr | dict[str, Any] | None = None  # a JSON string; an object is tolerated


class ToolCall(_Open):
    id: StrictStr | StrictInt | None = None
    type: StrictStr | None = None
    function: CalledFunction | None = None


class Message(_Open):
    role: Role
    content: StrictStr | list[dict[str, Any] | StrictStr] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: CalledFunction | None = None  # the legacy form of tool_calls
    tool_call_id: StrictStr | None = None


# OpenAI's rule for a function's name; Anthropic's and Gemini's admit these names too.
FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class FunctionDef(_Open):
    name: StrictStr = Field(min_length=1)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    """Function tools are what every adapter translates; other types (a provider's built-in
    tools) pass through to OpenAI-compatible upstreams as sent."""

    type: StrictStr
    function: FunctionDef | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class RouterOptions(BaseModel):
    """Per-request routing limits, sent as `"router": {...}` (the SDK's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")
    max_cost_usd: Number | None = Field(default=None, gt=0)
    max_latency_s: Number | None = Field(default=None, gt=0)
    allowed_models: list[StrictStr] | None = Field(default=None, min_length=1)  # [] would refuse every model
    excluded_models: list[StrictStr] | None = None
    required_tags: list[StrictStr] | None = None
    local_only: StrictBool | None = None


TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]
Bias = Annotated[Number, Field(ge=-100, le=100)]


class StreamOptions(_Open):
    include_usage: StrictBool | None = None  # a string "false" would read as true


class ChatRequest(_Open):
    model: StrictStr | None = None  # left out: the config's router.default_profile
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, ge=0, le=1)
    n: StrictInt | None = Field(default=None, ge=1, le=128)  # OpenAI's own bound; spend is n x one answer's
    presence_penalty: Number | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[TokenId, Bias] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), lt=2**63)  # OpenAI's: a 64-bit integer
    tools: list[Tool] | None = None  # [] is no tools (agent SDKs send it; it is not forwarded)
    tool_choice: StrictStr | dict[str, Any] | None = None
    functions: list[FunctionDef] | None = Field(default=None, min_length=1)  # the legacy form of tools
    response_format: ResponseFormat | None = None
    # Any text: OpenAI-compatible upstreams take efforts of their own (Groq's "default"); the
    # Anthropic and Gemini adapters map the ones they know (service/providers/reasoning.py).
    reasoning_effort: StrictStr | None = None
    user: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    router: RouterOptions | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _null_is_no_stream(cls, value: Any) -> Any:
        # OpenAI reads null as the default for every optional field; SDKs and templates send it.
        return False if value is None else value


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _location(err: dict[str, Any]) -> str:
    """`messages[0].content` from pydantic's loc, without the union-member tags it inserts."""
    parts: list[str] = []
    for p in err.get("loc", ()):
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p not in _TYPE_TAGS and "[" not in str(p) and not str(p).startswith("function-"):
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _refusal(err: Any) -> ApiError:
    """The 400 for pydantic's first error, in the client's terms: pydantic's own words name its
    classes ("a valid dictionary or instance of RouterOptions")."""
    where, kind = _location(err), err.get("type")
    if kind == "missing":
        return _missing(where)
    if kind in ("model_type", "dict_type"):
        return _invalid(where, f"expected an object, got {_json_type(err.get('input'))}")
    if kind == "extra_forbidden":  # only `router` refuses fields it does not know: a misspelt cap would not apply
        field, known = where.rpartition(".")[2], list(RouterOptions.model_fields)
        return bad_request(f"{where!r} is not a known field{did_you_mean(field, known)}; the fields of 'router' are "
                           f"{', '.join(known)}", code="invalid_value", param=where)
    return _invalid(where, str(err.get("msg")))


def router_options(value: Any) -> RouterOptions:
    """A request's `router` object on its own (a calibration's request template), refused in the
    words the gateway uses for it inside a chat body."""
    try:
        return RouterOptions.model_validate(value)
    except ValidationError as exc:
        err = dict(exc.errors()[0])
        raise _refusal({**err, "loc": ("router", *err.get("loc", ()))}) from None


def validate_chat(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise _refusal(exc.errors()[0]) from None
    if "model" in request.model_fields_set and not request.model:
        # OpenAI refuses these; only a body without the key routes with the default profile.
        given = "null" if request.model is None else "an empty string"
        raise _invalid("model", f"the model is empty ({given}); send a model name or a routing profile such as 'auto', "
                       "or leave 'model' out for the default profile")
    answering = False  # whether a tool message here answers an assistant's tool calls
    for i, message in enumerate(request.messages):
        _check_message(message, f"messages[{i}]")
        if message.role == "tool" and not answering:
            # OpenAI refuses it; Anthropic and Gemini need the call a result answers, and an
            # orphan result (a history trimmed between call and result) reached them as a 400.
            raise _invalid(f"messages[{i}].role", "a 'tool' message must answer a preceding assistant message's 'tool_calls'")
        answering = bool(message.tool_calls) if message.role != "tool" else answering
    _check_tools(request)
    _check_options(request)
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise _missing("response_format.json_schema")
        name = fmt.json_schema.get("name")
        if not name:
            raise _missing("response_format.json_schema.name")
        if not isinstance(name, str):
            raise _invalid("response_format.json_schema.name", f"expected a string, got {_json_type(name)}")
        if fmt.json_schema.get("schema") is not None:  # the same breaker risk as a tool's schema
            _check_schema(fmt.json_schema["schema"], "response_format.json_schema.schema")
    return request


def _check_message(message: Message, where: str) -> None:
    if message.role == "tool" and not message.tool_call_id:
        raise _missing(f"{where}.tool_call_id")
    if message.content == [] and message.role in ("user", "system", "developer"):
        # OpenAI refuses it for every role; an assistant's replayed tool-call turn is let through,
        # as providers that take it (its content says nothing) are not refused a history.
        raise _invalid(f"{where}.content", "an empty array; send at least one content part, or a string")
    if message.role == "user" and message.content is None:
        if "content" not in message.model_fields_set:
            raise _missing(f"{where}.content")
        raise _invalid(f"{where}.content", "a user message needs content, got null")
    for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
        if not isinstance(part, dict):
            continue
        at = f"{where}.content[{j}]"
        kind = part.get("type")
        if kind is None:
            raise _missing(f"{at}.type")
        if not isinstance(kind, str):
            raise _invalid(f"{at}.type", f"expected a string, got {_json_type(kind)}")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _invalid(f"{at}.text", f"expected a string, got {_json_type(part.get('text'))}")
        image = part.get("image_url")
        # Adapters translate image parts for Anthropic and Gemini: the shape must be OpenAI's.
        if kind == "image_url" and (not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]):
            raise _missing(f"{at}.image_url.url")
        detail = image.get("detail") if isinstance(image, dict) else None
        if kind in ("image_url", "input_image") and detail is not None and not isinstance(detail, str):
            # The image's token cost is looked up by its detail: a list or an object there was a 500.
            raise _invalid(f"{at}.image_url.detail", f"expected 'auto', 'low' or 'high', got {_json_type(detail)}")


def _check_tools(request: ChatRequest) -> None:
    """Function definitions as OpenAI checks them. A malformed schema must not reach an upstream:
    the upstream's failure would count against the model's breaker, and a few such requests from
    one client would take every tool-capable model out of service for everyone."""
    names: set[str] = set()
    for i, tool in enumerate(request.tools or ()):
        if tool.type != "function":
            continue  # a provider's built-in tool or an OpenAI custom tool: the upstream judges it
        if tool.function is None:
            raise _missing(f"tools[{i}].function")
        _check_function_name(tool.function.name, f"tools[{i}].function.name")
        names.add(tool.function.name)
        if tool.function.parameters is not None:
            _check_schema(tool.function.parameters, f"tools[{i}].function.parameters")
    for i, fn in enumerate(request.functions or ()):
        _check_function_name(fn.name, f"functions[{i}].name")
        if fn.parameters is not None:
            _check_schema(fn.parameters, f"functions[{i}].parameters")
    choice = request.tool_choice
    if choice is None:
        return
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        raise _invalid("tool_choice", f"expected 'none', 'auto', 'required' or a named tool, got {choice!r}")
    if choice != "none" and not request.tools:
        raise _invalid("tool_choice", "'tool_choice' is only allowed when 'tools' are specified")
    if isinstance(choice, dict):
        if "type" not in choice:
            raise _missing("tool_choice.type")
        if choice["type"] == "function":
            function = choice.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _missing("tool_choice.function.name")
            if function["name"] not in names:
                raise _invalid("tool_choice.function.name", f"no function tool named {function['name']!r} in 'tools'")


_SCHEMA_DEPTH = 32
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf"})


def _check_schema(schema: Any, where: str) -> None:
    """The JSON-Schema structure an upstream must be able to walk (its keywords' own values
    are the upstream's to judge): every subschema an object or a boolean (`true`: anything, as
    Rust's schemars writes an any-JSON field), `required` a list of names."""
    problem = _schema_problem(schema, 0)
    if problem is not None:
        path, why = problem
        raise _invalid(where + "".join(reversed(path)), why)


def _schema_problem(schema: Any, depth: int) -> tuple[list[str], str] | None:
    """(the path to the bad part, innermost first; why), or None. An agent's dozen tools are
    checked on every turn: only the keywords a node has are looked at, and a path is spelled out
    only for a schema that is refused."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return [], f"expected a JSON schema (an object or a boolean), got {_json_type(schema)}"
    if depth >= _SCHEMA_DEPTH:
        return [], f"the schema nests deeper than {_SCHEMA_DEPTH} levels"
    for key, value in schema.items():
        if key == "type":
            if not isinstance(value, str) and not (isinstance(value, list) and all(isinstance(k, str) for k in value)):
                return [".type"], f"expected a type name or a list of them, got {_json_type(value)}"
        elif key == "required":
            if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
                return [".required"], "expected a list of property names"
        else:
            children = _subschemas(key, value)
            if isinstance(children, str):
                return [f".{key}"], children
            for at, sub in children:
                if (problem := _schema_problem(sub, depth + 1)) is not None:
                    problem[0].append(at)
                    return problem
    return None


def _subschemas(key: str, value: Any) -> Sequence[tuple[str, Any]] | str:
    """The schemas a keyword holds, each with its path; a string says why the keyword is malformed."""
    if key in _SCHEMA_MAPS:
        if not isinstance(value, dict):
            return f"expected an object of schemas, got {_json_type(value)}"
        return [(f".{key}.{name}", sub) for name, sub in value.items()]
    if key in _SCHEMA_LISTS or (key == "items" and isinstance(value, list)):  # `items` as a list: older drafts' tuples
        if not isinstance(value, list):
            return f"expected a list of schemas, got {_json_type(value)}"
        return [(f".{key}[{n}]", sub) for n, sub in enumerate(value)]
    if key in ("items", "additionalProperties"):
        return [(f".{key}", value)]
    return ()  # a keyword that holds no schema (description, enum, ...): most of them


def _check_function_name(name: str, where: str) -> None:
    # Refused here rather than by an upstream: its 400 would depend on which model was routed to.
    if not FUNCTION_NAME.fullmatch(name):  # `$` would let a final line break through
        raise _invalid(where, f"{name!r} is no function name: use 1 to 64 letters, digits, underscores and dashes")


def _check_options(request: ChatRequest) -> None:
    """Combinations OpenAI refuses that no single field's type can say."""
    if isinstance(request.stop, list) and len(request.stop) > 4:
        raise _invalid("stop", f"at most 4 stop sequences are allowed, got {len(request.stop)}")
    if request.top_logprobs is not None and not request.logprobs:
        raise _invalid("top_logprobs", "'logprobs' must be true to use 'top_logprobs'")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(type(value), "a value")


def _missing(where: str) -> ApiError:
    return bad_request(f"missing required parameter: {where!r}", code="missing_required_parameter", param=where)


def _invalid(where: str, why: str) -> ApiError:
    return bad_request(f"invalid value for {where!r}: {why}", code="invalid_value", param=where)


# A body above this is parsed and validated in a worker thread, off the event loop: an agent's
# tool-call history costs ~5 ms per 64 KB to parse and validate; below it, inline costs less than
# the ~0.1 ms a thread hop does. json's parser, pydantic-core and the garbage collector keep the
# GIL through their C code, so a multi-megabyte body still slows the loop (docs/DEPLOYMENT.md).
OFF_LOOP_BYTES = 64 * 1024


async def read_json_body(request: Request, max_bytes: int, optional: bool = False) -> Any:
    """The request body as JSON (`read_body`, `parse_json`), parsed off the event loop when large."""
    raw = await read_body(request, max_bytes)
    if len(raw) > OFF_LOOP_BYTES:
        return await run_in_threadpool(parse_json, raw, optional)
    return parse_json(raw, optional)


def judge_chat(data: bytes) -> tuple[Any, ChatRequest | ApiError]:
    """A chat body as JSON (a 400 when it is none) and as a validated request, or the 400 its
    content earns: beside the JSON, which a refusal's log row takes the model name from."""
    raw = parse_json(data)
    try:
        return raw, validate_chat(raw)
    except ApiError as exc:
        return raw, exc


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing more than `max_bytes` before reading it all, and one in an
    encoding the gateway does not decode (read as JSON, a gzip body had been called invalid JSON)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, f"the request body's Content-Encoding {encoding!r} is not supported; send it uncompressed",
                       code="unsupported_content_encoding")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, optional: bool = False) -> Any:
    """A body as JSON; an empty body is a 400, or None where the body is `optional`."""
    if not raw.strip():
        if optional:
            return None
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        # Upstreams get the body re-serialised: a NaN would reach them as a bare `NaN` token.
        return json_text.loads(raw, finite=True)
    except ValueError as exc:  # invalid JSON or UTF-8, a non-finite number, or too deep for json_text to walk
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply", code="invalid_json") from None


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the limit of {max_bytes} bytes", code="request_too_large")
