"""Request validation for the chat endpoint.

The schema checks what the router relies on (messages, roles, types of the fields it reads)
and allows every other field: the client's body is forwarded as sent, so a parameter we do
not know about (a new OpenAI field, a provider extension) still reaches the upstream.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.requests import Request

from service import json_text
from service.errors import ApiError, bad_request

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


class ChatRequest(_Open):
    model: StrictStr | None = None  # None: the config's router.default_profile
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, ge=0, le=1)
    n: StrictInt | None = Field(default=None, ge=1, le=128)  # OpenAI's own bound; spend is n x one answer's
    tools: list[Tool] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    router: RouterOptions | None = None


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


def validate_chat(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _location(err)
        if err.get("type") == "missing":
            raise _missing(where) from None
        raise bad_request(f"invalid value for {where!r}: {err.get('msg')}", code="invalid_value", param=where) from None
    for i, message in enumerate(request.messages):
        if message.role == "tool" and not message.tool_call_id:
            raise _missing(f"messages[{i}].tool_call_id")
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            # Adapters translate image parts for Anthropic and Gemini: the shape must be OpenAI's.
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                if not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]:
                    raise _missing(f"messages[{i}].content[{j}].image_url.url")
    for i, tool in enumerate(request.tools or ()):
        if tool.type == "function" and tool.function is None:
            raise _missing(f"tools[{i}].function")
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and not (fmt.json_schema or {}).get("name"):
        raise _missing("response_format.json_schema.name")
    return request


def _missing(where: str) -> ApiError:
    return bad_request(f"missing required parameter: {where!r}", code="missing_required_parameter", param=where)


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The request body as JSON, refusing more than `max_bytes` before reading it all."""
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
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return json_text.loads(raw)
    except ValueError as exc:  # invalid JSON or UTF-8, or too deep for json_text to walk
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply", code="invalid_json") from None


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the limit of {max_bytes} bytes", code="request_too_large")
