"""What may be read from and written to the cache.

Never cached: errors, truncated streams, answers that did not finish with `stop` (cut by the
length limit, filtered, an upstream's `error`), empty answers, `n > 1`, requests for
`logprobs` (a stored answer keeps none to replay), and by
default tool-call answers and requests with an explicit non-zero temperature (the client
asked for variety; a cached answer would repeat one sample forever). A request without a
`temperature` is cacheable: the client did not ask for sampling, and most chat clients
leave it out. Nor a question about the moment of asking ("What time is it right now?", "What's
the weather today?", "the latest news"): its answer goes stale long before an entry expires.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from router.cache.features import times
from router.cache.tokens import words
from router.request_view import content_text, wants_logprobs


@dataclass(frozen=True)
class CacheControl:
    read: bool
    write: bool


def cache_control(headers: Mapping[str, str]) -> CacheControl:
    """`Cache-Control: no-cache` → don't read (may write); `no-store` → neither. A header sent
    as several lines counts as one comma-separated list, as HTTP defines it."""
    value = ",".join(v for k, v in headers.items() if k.lower() == "cache-control")
    directives = {d.strip().split("=", 1)[0].lower() for d in value.split(",") if d.strip()}
    if "no-store" in directives:
        return CacheControl(read=False, write=False)
    if "no-cache" in directives:
        return CacheControl(read=False, write=True)
    return CacheControl(read=True, write=True)


_SENTENCE_END = re.compile(r"[.?!\n]+")
_PRESENT = re.compile(r"\b(?:right now|currently|latest|at the moment|this moment"
                      # the clock and the calendar: "what time it is", "the current date", "What time is it?"
                      r"|what time it is|current (?:time|date|day|year)(?! complexity))\b"
                      r"|\bwhat(?: (?:time|day|date|year|month) is it|(?:'s| is) the (?:time|date))(?: (?:now|today|there|in(?: \w+){1,3}))?$")
# "now" after these is no question about the present ("I now know ...", "it's now ...") unless it closes
# the sentence ("What time is it now?", "How much has it raised until now?").
_NOW_AFTER = frozenset("i we you he she it they i'm we're you're he's she's it's they're am have has had by until till".split())


def asks_about_now(text: str) -> bool:
    """Whether the question's last sentence asks about the moment of asking: a day or span named
    from it (`features.times`: today, tonight, this week, next year...), "right now", "currently",
    "latest", "at the moment", "this moment", the clock or the calendar ("What time is it?",
    "what's the date", "the current time"), or "now" (not "I now know", "now that", "from now
    on"; always when it closes the sentence). Only the last sentence: "I now know Python. What
    should I learn next?" is not one. Of QQP's 71,778 distinct questions it flags 742 (1.0 %)."""
    last = next((part for part in reversed(_SENTENCE_END.split(text)) if part.strip()), "")
    ws = words(last)
    joined = " ".join(ws)
    return bool(times(last) or _PRESENT.search(joined) or ws[-1:] == ("now",) or any(
        w == "now" and (i == 0 or ws[i - 1] not in _NOW_AFTER) and ws[i + 1:i + 2] not in (("that",), ("on",))
        for i, w in enumerate(ws)))


def request_cacheable(body: Mapping[str, Any], cache_nonzero_temperature: bool) -> str | None:
    """None when the request may use the cache, else why not. A question about the moment of
    asking is neither stored nor answered from the cache: an answer stored before this rule, or a
    cached neighbour the rule does not flag ("What time is it?"), would be as stale."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return "n > 1"
    if wants_logprobs(body):
        return "logprobs"  # a stored answer keeps no token log-probabilities to replay
    temperature = body.get("temperature")
    if not cache_nonzero_temperature and isinstance(temperature, (int, float)) and temperature > 0:
        return "non-zero temperature"
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, Mapping) and last.get("role") == "user" and asks_about_now(content_text(last.get("content"))):
        return "time-relative question"
    return None


def response_cacheable(response: Mapping[str, Any] | None, status: str, cache_tool_calls: bool) -> str | None:
    """None when the finished answer may be stored, else why not. A client that left before it
    had the answer (`client_closed`) leaves a whole one if it finished: its retry may have it."""
    if status not in ("ok", "client_closed"):
        return f"status {status}"
    if not response or not isinstance(response.get("choices"), list) or not response["choices"]:
        return "no answer"
    if "error" in response:
        return "error body"
    for choice in response["choices"]:
        reason = choice.get("finish_reason")
        message = choice.get("message") or {}
        calls = reason in ("tool_calls", "function_call") or message.get("tool_calls") or message.get("function_call")
        if calls and not cache_tool_calls:
            return "tool call"
        # Only a finished answer: "length", "content_filter", "error" (OpenRouter) or anything new is not.
        if reason != "stop" and not calls:
            return f"finish_reason {reason}"
        content = message.get("content")
        if not calls and not (isinstance(content, str) and content.strip()) and not message.get("refusal"):
            return "empty answer"
    return None
