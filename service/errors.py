"""OpenAI-style errors: `{"error": {"message", "type", "code", "param"}}` with the right status.

Every failure a client can see goes through here, so an SDK that parses OpenAI's error shape
gets a readable message and never a stack trace, whatever went wrong.
"""
from __future__ import annotations

import difflib
import logging
import math
from typing import TYPE_CHECKING, Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.store_errors import store_unreachable

if TYPE_CHECKING:
    from router.config import Config

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error the client is meant to see; raise it anywhere on the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self, extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(extra_headers or {})})


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def did_you_mean(name: str, valid: Any) -> str:
    """" (did you mean X?)" for the valid name closest to a misspelt `name`, or ""."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def rate_limited(message: str, waits: list[float]) -> ApiError:
    """A 429 telling the client the shortest of the upstreams' remaining waits, when known."""
    headers = {"retry-after": str(max(1, math.ceil(min(waits))))} if waits else {}
    return ApiError(429, message, code="rate_limit_exceeded", headers=headers)


def _models(models: list[str]) -> str:
    return f"model {models[0]}" if len(models) == 1 else f"models {', '.join(models)}"


def _key_envs(models: list[str], config: "Config") -> list[str]:
    return list(dict.fromkeys(e for m in models if (e := config.providers[config.model(m).provider].api_key_env)))


def _not_set(models: list[str], config: "Config") -> str:
    envs = _key_envs(models, config)
    return (f"{', '.join(envs)} {'is' if len(envs) == 1 else 'are'} not set in the gateway's environment, so "
            f"{_models(models)} cannot be called")


def key_refused(models: list[str], config: "Config", missing: list[str] | None = None) -> ApiError:
    """A 502 for models whose provider refuses the gateway's key: the operator's to fix, so not a
    503 "retry shortly", and `x-should-retry: false` keeps the OpenAI SDK from retrying a 5xx. It
    names the variables holding the keys; the upstream's own words stay in the gateway's log: they
    may quote part of the key, and the client may be another tenant. `missing`: the models tried
    beside them whose key variable is not set (`key_missing`)."""
    key_envs = _key_envs(models, config)
    where = f" (the key in {', '.join(key_envs)})" if key_envs else ""
    also = f"; {_not_set(missing, config)}" if missing else ""
    return ApiError(502, f"{_models(models)} cannot be called: the provider refuses the gateway's key{where} or its account "
                    f"is out of credit{also}; the gateway's operator must fix it (the upstream's answer is in the gateway's log)",
                    code="upstream_auth_failed", headers={"x-should-retry": "false"})


def key_missing(models: list[str], config: "Config") -> ApiError:
    """A 502 for models whose provider's key variable is not set where the gateway runs: no call
    was made, and nothing the upstream could say is involved (not `key_refused`'s "the provider
    refuses the key"). A running process's environment is its own, so the fix is a restart."""
    return ApiError(502, f"{_not_set(models, config)}: the gateway's operator must set it and restart the gateway",
                    code="provider_key_missing", headers={"x-should-retry": "false"})


def model_not_found(name: str, known: list[str]) -> ApiError:
    shown = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
    return ApiError(
        404,
        f"The model {name!r} does not exist. Use a routing profile or a model: {shown}",
        code="model_not_found",
        param="model",
    )


def invalid_body(exc: ValidationError | RequestValidationError, fields: Any = ()) -> ApiError:
    """The 400 for a body its model refuses, naming the first field at fault (FastAPI's own
    validation and a route's `model_validate` alike); `fields`, the model's, for a misspelt one."""
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden" and param and fields:
        # pydantic's "Extra inputs are not permitted" names neither the fields nor the one meant.
        msg = f"not a known field{did_you_mean(param, fields)}; the fields are {', '.join(fields)}"
    return bad_request(f"{param}: {msg}" if param else msg, param=param)


def internal_error(exc: BaseException) -> ApiError:
    """What a request that failed inside the gateway gets: a 503 to retry where a store it needs
    cannot be reached (it had been a 500, which the SDKs retry less and OpenClaw not at all), else
    a 500; the traceback goes to the log only."""
    if store_unreachable(exc):
        return ApiError(503, "a database the gateway needs cannot be reached right now; retry shortly",
                        code="store_unavailable", headers={"retry-after": "5"})
    return ApiError(500, "internal error in the router", code="internal_error")


def over_tpm_everywhere(input_tokens: int) -> ApiError:
    """No model the request may use takes its input within a minute's TPM: no retry helps."""
    return ApiError(413, f"the request's {input_tokens} input tokens are more than the tokens-per-minute limit of every "
                    "model it may use", code="request_too_large", param="messages")


def logged_internal_error(exc: BaseException, what: str) -> ApiError:
    """`internal_error`, logged: a store away is one line (expected while a database restarts,
    and every request meanwhile would write a traceback), our bug its traceback."""
    if store_unreachable(exc):
        first_line = (str(exc).strip().splitlines() or [""])[0]
        log.warning("%s: a store cannot be reached: %s: %s", what, type(exc).__name__, first_line)
    else:
        log.error("%s", what, exc_info=exc)
    return internal_error(exc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            # FastAPI reports a broken body at the byte offset ("1: JSON decode error").
            return JSONResponse(error_body("the request body is not valid JSON", "invalid_request_error", "invalid_json"),
                                status_code=400)
        return invalid_body(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        status_type = _TYPE_BY_STATUS.get(exc.status_code, "server_error" if exc.status_code >= 500 else "invalid_request_error")
        message = str(exc.detail)
        if exc.status_code == 404 and exc.detail == "Not Found":
            # An SDK prints only the message: say which API this is (a client pointed here for
            # the Responses, Embeddings or legacy Completions API learns why nothing is there).
            message = (f"{request.method} {request.url.path} is not a path of this gateway: it serves the Chat "
                       "Completions API (POST /v1/chat/completions), GET /v1/models, POST /v1/route, "
                       "POST /v1/feedback, GET /healthz, GET /metrics, /admin/... and the dashboard at /ui")
        # Starlette's 405 carries the `Allow` header that HTTP requires with it.
        return JSONResponse(error_body(message, status_type, code), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to our log only; the client learns that it was our fault.
        return logged_internal_error(exc, f"unhandled error on {request.method} {request.url.path}").response()

    app.add_middleware(StoresAway)


class StoresAway:
    """A store that cannot be reached (a database restarting) answers 503 here, inside Starlette's
    outermost middleware: that one runs the handler for Exception and then raises the error again,
    so uvicorn logged each 503 with a traceback and closed the connection, and a client's next
    request on it failed. (Pure ASGI: it passes a stream's messages on as they come.)"""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started or not store_unreachable(exc):
                raise
            await logged_internal_error(exc, f"{scope['method']} {scope['path']} failed").response()(scope, receive, send)
