"""Reasoning controls and state that OpenAI's chat format has no place for, shared by the adapters:
`reasoning_effort`'s thinking budgets, a refusal of `logprobs` where a provider has none,
and Gemini's thought signatures carried inside tool-call ids."""
from __future__ import annotations

from service.providers.base import UpstreamError

# OpenAI's reasoning_effort (service.schemas.ReasoningEffort, checked there; "none" is no thinking)
# as thinking tokens: the budgets Google's own OpenAI-compatible endpoint gives these efforts (low
# 1,024, medium 8,192, high 24,576); 1,024 is also Anthropic's minimum.
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}


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
