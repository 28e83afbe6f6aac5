"""The provider contract every adapter implements, and the error vocabulary of the failover logic.

A provider speaks one upstream wire format (OpenAI chat completions, Anthropic Messages,
Gemini generateContent) and shows the gateway a single shape: the client's OpenAI chat
body goes in, an OpenAI `chat.completion` (or a stream of `chat.completion.chunk` dicts)
comes out. Every failure is an `UpstreamError` whose `kind` tells the gateway what to do
next (retry, fail over, try a bigger context window, or give up), so adapters never leak
HTTP-client exceptions or provider-specific error bodies.

The HTTP client is aiohttp: its C parser costs ~0.2 ms of CPU per upstream call here against
~0.6 ms for httpx, and that call sits on every request's latency path (docs/BENCHMARKS.md).

API keys are read from the environment at request time, never stored in errors or logs:
every message built from an upstream body goes through `scrub`.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import math
import os
import re
import ssl
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal, Mapping

import aiohttp

from router.config import ModelSpec, ProviderSpec
from router.request_view import output_limit as requested_output_limit
from service import json_text
from service.providers.sse_read import iter_sse

ErrorKind = Literal[
    "rate_limit", "server", "timeout", "connection", "context_length", "bad_request", "unsupported", "auth", "not_found",
    "malformed",
]

# Worth another attempt (same model after a backoff, or the next candidate).
RETRYABLE_KINDS: frozenset[str] = frozenset({"rate_limit", "server", "timeout", "connection", "malformed"})
# The request itself may succeed on a different model: the upstream is at fault, not the client.
# `unsupported` (a parameter this model refuses, as reasoning_effort on a model that does not
# reason) only for a routed request: a request naming the model gets the upstream's 400.
FAILOVER_KINDS: frozenset[str] = RETRYABLE_KINDS | {"context_length", "not_found", "auth", "unsupported"}

_CONTEXT_WORDING = re.compile(
    r"context_length_exceeded|context length|context window|maximum context|prompt is too long|"
    r"too many tokens|input token count|exceeds the maximum number of tokens|reduce the length|"
    r"input is too long|maximum input length|exceed context limit",
    re.IGNORECASE,
)

# Gemini answers a bad or expired key with HTTP 400 INVALID_ARGUMENT, not 401 (the reason
# API_KEY_INVALID is in `error.details`).
_AUTH_WORDING = re.compile(r"API key not valid|API key expired|API_KEY_INVALID|invalid api key", re.IGNORECASE)
# An account out of credit or quota: not transient (OpenAI says it with a 429, Anthropic with a 400),
# so another model, never a retry or a 429 the client would wait out.
# Not the word "billing" alone: OpenAI's ordinary rate-limit messages link to its billing page.
_BILLING_WORDING = re.compile(
    r"insufficient_quota|credit balance is too low|billing_hard_limit|billing_not_active|billing_error|"
    r"Insufficient Balance|Insufficient credits|credit balance is depleted",
    re.IGNORECASE,
)
# Gemini's FAILED_PRECONDITION is the project, not the request: billing off, a region without the
# free tier.
_ACCOUNT_STATUS = re.compile(r"\bFAILED_PRECONDITION\b")
# A valid request with a parameter this model does not take: OpenAI's "Unrecognized request argument
# supplied: reasoning_effort" and unsupported_parameter / unsupported_value, Groq's "`reasoning_effort`
# is not supported with this model", Mistral's 422 "Extra inputs are not permitted", Ollama's
# '"llama3.1:8b" does not support thinking' (its answer to reasoning_effort).
_UNSUPPORTED_WORDING = re.compile(
    r"unsupported_parameter|unsupported_value|unrecognized request argument|unsupported parameter|"
    r"is not supported (?:with|by|for|on) this model|extra inputs are not permitted|does not support thinking",
    re.IGNORECASE,
)
# Some OpenAI-compatible upstreams (OpenRouter, DeepSeek) answer a retired or unknown model id with
# HTTP 400, not 404: the catalog is out of date, another model can answer.
_UNKNOWN_MODEL_WORDING = re.compile(
    r"model_not_found|not a valid model|model not exist|model does not exist|unknown model|no such model|"
    r"\bmodel\b[^.]{0,120}\bdoes not exist",
    re.IGNORECASE,
)


class UpstreamError(Exception):
    """A failed upstream call, classified for the failover logic.

    `retryable`: rate_limit/server/timeout/connection/malformed — a transient fault, try again
    (after `retry_after` seconds when the upstream said so) or fail over.
    `kind == "context_length"`: the prompt does not fit; only a model with a bigger window helps.
    `failover`: the request may still succeed on another model (retryable, context_length, and
    upstream configuration faults: not_found, auth). bad_request is the client's fault.
    """

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None, retry_after: float | None = None,
                 *, code: str | None = None, param: str | None = None):
        super().__init__(f"{kind}: {message}" if status is None else f"{kind} (HTTP {status}): {message}")
        self.kind: ErrorKind = kind
        self.status = status
        # An upstream's answer (a status, or an error in its body), not an adapter's refusal before sending.
        self.from_upstream = status is not None
        self.message = message
        self.retry_after = retry_after
        # The upstream's own error fields: a client error is passed on with them, for clients that
        # branch on the code (`invalid_parameter_combination`, param `max_tokens`).
        self.code = code
        self.param = param

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    @property
    def failover(self) -> bool:
        return self.kind in FAILOVER_KINDS


def scrub(text: str, secrets: tuple[str | None, ...]) -> str:
    """Remove API keys from text that came from (or goes to) an upstream."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# The longest wait an upstream's word holds a model out for: a day (a daily quota). "inf" had been a
# 500 at every later request naming the model, which stayed blocked until a restart.
MAX_RETRY_AFTER_S = 86_400.0


def _wait(seconds: float) -> float | None:
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP-date), at most a day;
    None when absent or not a finite number ("inf", "nan")."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            waited = _wait(float(ms) / 1000.0)
        except ValueError:
            waited = None
        if waited is not None:  # else `retry-after` may say it
            return waited
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return _wait(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return _wait(when.timestamp() - (time.time() if now is None else now))


def error_message(payload: Any, fallback: str) -> str:
    """The human message inside an upstream error body of any of the supported wire formats."""
    if isinstance(payload, Mapping):
        err = payload.get("error", payload)
        if isinstance(err, Mapping):
            msg = err.get("message")
            if isinstance(msg, str) and msg:
                return msg
        elif isinstance(err, str) and err:
            return err
        detail = payload.get("detail")  # FastAPI's: a string, or a 422's list of {"loc", "msg"}
        for msg in (payload.get("message"), detail):
            if isinstance(msg, str) and msg:
                return msg
        if isinstance(detail, list) and detail and all(isinstance(d, Mapping) and isinstance(d.get("msg"), str) for d in detail):
            return "; ".join(".".join(map(str, d.get("loc") or ())) + (": " if d.get("loc") else "") + d["msg"] for d in detail)
    if isinstance(payload, list) and payload:
        return error_message(payload[0], fallback)
    return fallback


def _error_object(payload: Any) -> Mapping[str, Any]:
    """The `error` object of an upstream error body (Gemini may wrap the body in a list); {} when
    there is none, as when a proxy sends `{"error": "quota exceeded"}`."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if not isinstance(payload, Mapping):
        return {}
    err = payload.get("error", payload)
    return err if isinstance(err, Mapping) else {}


def _error_code(payload: Any) -> str:
    """The machine-readable code/type/status words of an error body, for classification."""
    err = _error_object(payload)
    details = err.get("details")
    reasons = [d.get("reason") for d in details if isinstance(d, Mapping) and d.get("reason")] if isinstance(details, list) else []
    return " ".join([*(str(err.get(k) or "") for k in ("code", "type", "status")), *map(str, reasons)])


def classify(status: int, payload: Any, text: str) -> ErrorKind:
    words = f"{_error_code(payload)} {error_message(payload, text)}"
    # 402 Payment Required (DeepSeek, OpenRouter, Gemini's prepaid credit): never transient, and
    # Gemini says RESOURCE_EXHAUSTED with it, which would otherwise read as a rate limit.
    if status == 402 or _BILLING_WORDING.search(words) or _ACCOUNT_STATUS.search(words):
        return "auth"
    if status == 429 or "RESOURCE_EXHAUSTED" in words or "rate_limit" in words:
        return "rate_limit"
    if status >= 500:
        return "server"
    if status == 408:
        return "timeout"
    if status == 413 and not _CONTEXT_WORDING.search(words):
        # The body's bytes (Anthropic's 32 MB), not its tokens: a model with a bigger window may
        # refuse it too and one with a smaller window may take it, so no model is skipped for it.
        return "unsupported"
    if status == 413 or _CONTEXT_WORDING.search(words):
        return "context_length"
    if status in (401, 403) or _AUTH_WORDING.search(words):
        return "auth"
    if status == 404 or (status == 400 and _UNKNOWN_MODEL_WORDING.search(words)):
        return "not_found"
    if status in (400, 422) and _UNSUPPORTED_WORDING.search(words):
        return "unsupported"
    return "bad_request"


def error_from_response(
    status: int, body: bytes | str, headers: Mapping[str, str], secrets: tuple[str | None, ...] = ()
) -> UpstreamError:
    """Turn a non-2xx upstream response into an `UpstreamError` (message scrubbed of keys)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = None
    # Scrubbed before the cut: a key the cut splits would no longer match.
    return _upstream_error(status, payload, text, scrub(text.strip(), secrets)[:500] or f"HTTP {status}", secrets,
                           reported=status, retry_after=parse_retry_after(headers))


# An error object sent with HTTP 200 has a type but often no status; these are the statuses each
# type goes with on a plain response (Anthropic's types; OpenAI's are among them), so one
# classifier serves both.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def error_in_body(payload: Mapping[str, Any], secrets: tuple[str | None, ...] = ()) -> UpstreamError:
    """The error in a body sent with HTTP 200: an error event inside a stream, or a whole answer
    that is an error (some proxies; Anthropic's `type: error`). Its `error` may be anything, a
    proxy's plain string included."""
    err = _error_object(payload)
    code = err.get("code")
    given = code if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599 else None
    # Without a status the type is the only cue; none at all is a fault of the upstream's (fail over).
    status = given or _STATUS_BY_TYPE.get(str(err.get("type")), 500)
    fallback = "error object in the upstream's answer"
    error = _upstream_error(status, payload, fallback, fallback, secrets, reported=given, retry_after=None)
    error.from_upstream = True  # no status reported, but the upstream's own word
    return error


def _upstream_error(status: int, payload: Any, text: str, fallback: str, secrets: tuple[str | None, ...], *,
                    reported: int | None, retry_after: float | None) -> UpstreamError:
    """The `UpstreamError` for an error body, classified as from HTTP `status` and `reported` as
    of that status (None when the upstream answered 200). `text` is the raw body, for wording."""
    err = _error_object(payload)
    fields = {k: scrub(v, secrets) for k in ("code", "param") if isinstance(v := err.get(k), str) and v}
    return UpstreamError(classify(status, payload, text), scrub(error_message(payload, fallback), secrets), status=reported,
                         retry_after=_gemini_retry_delay(payload) if retry_after is None else retry_after, **fields)


def _gemini_retry_delay(payload: Any) -> float | None:
    """Gemini puts the wait in error.details[].retryDelay ("30s") instead of a header."""
    details = _error_object(payload).get("details")
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, Mapping) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return _wait(float(delay[:-1]))
            except ValueError:
                return None
    return None


def transport_error(exc: BaseException, secrets: tuple[str | None, ...] = ()) -> UpstreamError:
    """Map a transport failure (no HTTP status) to an error kind."""
    detail = str(exc) or "no response within the configured timeout"
    if isinstance(exc, aiohttp.ClientPayloadError):
        # aiohttp's words quote its parser's internal "400" ("TransferEncodingError: 400, message='Not
        # enough data...'"), which a client classifying errors by their text reads as a refusal.
        detail = "the upstream's connection closed before the end of its answer"
    message = scrub(f"{type(exc).__name__}: {detail}", secrets)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connection", message)
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors
        return UpstreamError("timeout", message)
    return UpstreamError("connection", message)


TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


def output_limit(model: ModelSpec, body: dict[str, Any]) -> int | None:
    """The request's output limit (`router.request_view.output_limit`) as sent to this model
    (`ModelSpec.output_cap`)."""
    return model.output_cap(requested_output_limit(body)[0])


def tool_arguments(arguments: Any) -> dict[str, Any]:
    """An OpenAI tool call's `arguments` (a JSON string) as the object Anthropic and Gemini want.
    A history may hold arguments that are not a JSON object (a call cut off at max tokens, a
    small model's sloppy JSON); OpenClaw replays them every turn, so they are wrapped, never
    refused: a refusal would be a 400 on every later turn routed to these providers."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {"arguments": str(arguments)}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """Certificates from certifi, as httpx and the OpenAI SDK verify them: slim containers may
    lack a system CA store."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def env_proxy(url: str) -> str | None:
    """The proxy `HTTPS_PROXY` / `HTTP_PROXY` name for `url`, unless `NO_PROXY` exempts its host
    (the variables the OpenAI SDK honours), read when a provider's session is made."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class Provider(ABC):
    """One upstream endpoint, with a pooled async HTTP session and timeouts from its spec."""

    def __init__(self, spec: ProviderSpec):
        self.spec = spec
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # A stream's, as httpx's per-operation timeouts: waiting for a pooled connection,
        # connecting and each read may take `timeout_s`; a stream that keeps sending may run longer.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=spec.timeout_s, sock_connect=spec.connect_timeout_s, sock_read=spec.timeout_s
        )
        # A non-streamed answer's first byte comes when the whole answer is done: the call may take
        # `answer_wait_s` in all.
        self._answer_timeout = aiohttp.ClientTimeout(
            total=spec.answer_wait_s, connect=spec.timeout_s, sock_connect=spec.connect_timeout_s
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the event loop that serves the requests (aiohttp binds a
        session to its loop; providers are built before the server's loop starts)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            # Not trust_env: that looks up proxies and ~/.netrc in a worker thread on every
            # request (two thread hops, ~0.25 ms of CPU here), and a .netrc entry for the host
            # would make aiohttp refuse our Authorization header outright.
            self._proxy = env_proxy(self.base_url)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.spec.max_connections, ssl=tls_context()),
                timeout=self._timeout,
            )
        return self._session

    @property
    def base_url(self) -> str:
        return self.spec.base_url.rstrip("/")

    def api_key(self) -> str | None:
        """The key, read now so a rotated env var takes effect without a restart. Surrounding
        white space is dropped: a secret mounted from a file (`kubectl create secret
        --from-file`) or a CRLF .env file ends in a line break, which no HTTP header may carry."""
        name = self.spec.api_key_env
        if not name:
            return None
        key = self._secrets()[0]
        if not key:
            raise UpstreamError("auth", f"environment variable {name} is not set")
        if not key.isprintable():
            raise UpstreamError("auth", f"environment variable {name} holds a line break or another control character "
                                "inside the key")
        return key

    def _secrets(self) -> tuple[str | None, ...]:
        name = self.spec.api_key_env
        return (((os.environ.get(name) or "").strip() or None) if name else None,)

    def _http_error(self, status: int, body: bytes, headers: Mapping[str, str], secrets: tuple[str | None, ...]) -> UpstreamError:
        err = error_from_response(status, body, headers, secrets)
        if err.kind == "auth" and self.spec.api_key_env:
            # Which of the operator's variables holds the key refused (or out of credit).
            err.message = f"{err.message} (the key in {self.spec.api_key_env})"
        return err

    @abstractmethod
    async def complete(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming call: OpenAI chat body in, OpenAI `chat.completion` out (`model` = model.name)."""

    @abstractmethod
    def stream(self, model: ModelSpec, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """OpenAI `chat.completion.chunk` dicts; the last carries `usage` when the upstream reports it."""

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _request_kwargs(self, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return {"data": json.dumps(payload).encode(), "proxy": self._proxy,
                "headers": {"content-type": "application/json", **self.spec.headers, **headers}}

    async def _post_json(self, url: str, payload: dict[str, Any], headers: dict[str, str]) -> Any:
        secrets = self._secrets()
        try:
            async with self.session.post(url, timeout=self._answer_timeout, **self._request_kwargs(payload, headers)) as response:
                body = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, secrets) from None
        if response.status >= 400:
            raise self._http_error(response.status, body, response.headers, secrets)
        try:
            return json_text.loads(body)
        except ValueError:
            raise UpstreamError(
                "malformed", f"response is not JSON: {scrub(body.decode('utf-8', 'replace'), secrets)[:200]!r}",
                status=response.status,
            ) from None

    @asynccontextmanager
    async def _open_stream(
        self, url: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streaming POST whose status has been checked; transport errors while reading are
        the caller's to map (see `_sse_events`)."""
        secrets = self._secrets()
        try:
            async with self.session.post(url, **self._request_kwargs(payload, headers)) as response:
                if response.status >= 400:
                    body = await response.read()
                    raise self._http_error(response.status, body, response.headers, secrets)
                # A 2xx that is no event stream (a captive portal's HTML page, a whole JSON answer)
                # holds no event: read as one, it would pass for a stream cut before its first. A
                # server that names no type at all is given the benefit of the doubt.
                declared = response.headers.get("content-type")
                if declared is not None and response.content_type != "text/event-stream":
                    raise UpstreamError("malformed", f"the answer to a stream request is {scrub(declared, secrets)[:100]!r}, "
                                        "not text/event-stream", status=response.status)
                yield response
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, secrets) from None

    async def _sse_events(
        self, url: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[tuple[str | None, str]]:
        secrets = self._secrets()
        async with self._open_stream(url, payload, headers) as response:
            try:
                async for item in iter_sse(response):
                    yield item
            except TRANSPORT_ERRORS as exc:
                raise transport_error(exc, secrets) from None
