"""Reasoning controls and state that OpenAI's chat format has no place for, shared by the adapters:
`reasoning_effort` read as a thinking budget, a refusal of `logprobs` where a provider has none,
and Gemini's thought signatures carried inside tool-call ids."""
from __future__ import annotations

from typing import Any

from service.providers.base import UpstreamError

# OpenAI's reasoning_effort as thinking tokens: the budgets Google's own OpenAI-compatible endpoint
# gives these efforts (low 1,024, medium 8,192, high 24,576); 1,024 is also Anthropic's minimum.
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}
EFFORTS = ("none", *THINKING_BUDGETS)
# Efforts other clients send: "max" (OpenRouter's, Claude's) is the most there is; "adaptive"
# (Claude's: think as deep as the question needs) the middle budget, which older Claude models
# take too; "auto" and "default" leave thinking to the model, as no effort does.
EFFORT_ALIASES = {"max": "xhigh", "adaptive": "medium", "auto": None, "default": None}


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """The request's `reasoning_effort` as one of EFFORTS, None for the model's own thinking; an
    effort neither OpenAI nor an alias names is refused, as OpenAI refuses it."""
    effort = body.get("reasoning_effort")
    if effort in EFFORT_ALIASES:
        return EFFORT_ALIASES[effort]
    if effort is None or effort in EFFORTS:
        return effort
    raise UpstreamError("bad_request", f"reasoning_effort must be one of {', '.join([*EFFORTS, *EFFORT_ALIASES])}, "
                        f"got {effort!r}", code="invalid_value", param="reasoning_effort")


def refuse_logprobs(provider: str) -> UpstreamError:
    """A request for logprobs a provider cannot give: answering with `logprobs: null` would pass
    for a model that had none to give."""
    return UpstreamError("bad_request", f"{provider} models return no log probabilities; ask without logprobs "
                         "and top_logprobs, or for a model that gives them", code="unsupported_parameter", param="logprobs")


# Gemini 3 signs its function calls (`thoughtSignature`) and refuses a history that replays a call
# without its signature. OpenAI clients replay a call by its id and drop fields they do not know, so
# the signature rides in the id (LiteLLM's separator), in the URL-safe base64 alphabet, unpadded, so
# the id stays within the letters, digits, `_` and `-` that ids are made of elsewhere.
SIGNATURE_SEPARATOR = "__thought__"


def id_with_signature(call_id: str, signature: str | None) -> str:
    if not signature:
        return call_id
    return f"{call_id}{SIGNATURE_SEPARATOR}{signature.translate(_TO_URLSAFE).rstrip('=')}"


def split_signature(call_id: str) -> tuple[str, str | None]:
    """(the id without its signature, the signature as Gemini sent it, or None)."""
    base, found, encoded = call_id.partition(SIGNATURE_SEPARATOR)
    if not found or not encoded:
        return call_id, None
    return base, encoded.translate(_FROM_URLSAFE) + "=" * (-len(encoded) % 4)


_TO_URLSAFE = str.maketrans("+/", "-_")
_FROM_URLSAFE = str.maketrans("-_", "+/")
