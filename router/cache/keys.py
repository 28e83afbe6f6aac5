"""Cache keys: the normalised exact key and the context fingerprint of a chat request.

The exact key covers everything that can change the answer: route (profile or model),
every message, tools, response_format, every other body field that reaches the model
(generation parameters, provider extensions) and the tenant. The context
fingerprint is the same minus the last user turn: two requests may share a semantic-cache
answer only when their fingerprints are equal, so the same question asked under another
system prompt, history, tool set or temperature is a miss (vLLM semantic router #1581).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from router.request_view import content_text

# Body fields that cannot change the answer. Every other field is part of both keys: a list of
# the fields that do would miss provider extensions (top_k, min_p, repetition_penalty...) that
# OpenAI-compatible upstreams receive as sent.
NOT_ANSWER_FIELDS = frozenset({
    "model", "messages", "tools", "functions", "response_format",  # keyed on their own
    "stream", "stream_options", "user", "metadata", "store", "service_tier", "safety_identifier",
    "prompt_cache_key", "router",
})


_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def canonical_text(text: str) -> str:
    """Trailing blanks and leading blank lines go and line endings become "\\n"; everything else
    stays, the first line's indentation and runs of spaces or tabs inside a line included:
    "'a  b'.split(' ')" and "'a b'.split(' ')" are other questions, and so are YAML documents
    indented differently."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _LEADING_BLANK_LINES.sub("", text.rstrip())


def _number(v: Any) -> Any:
    # `temperature: 0` and `temperature: 0.0` ask for the same thing; json.dumps writes them apart.
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _message(m: Mapping[str, Any]) -> dict[str, Any]:
    # Every field counts (name, tool_calls, tool_call_id, a legacy function_call...); only the
    # text is canonicalised.
    out: dict[str, Any] = {k: v for k, v in m.items() if k != "content" and v is not None}
    content = m.get("content")
    if isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type") not in (None, "text") for p in content):
        # Images and other parts are part of the question: keep them verbatim.
        out["content"] = content
    else:
        out["content"] = canonical_text(content_text(content))
    return out


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


SEMANTIC_MAX_CHARS = 1000  # about the 256 wordpieces the embedder reads, in English prose


@dataclass(frozen=True)
class RequestKeys:
    exact: str  # digest of the whole normalised request
    fingerprint: str  # digest of everything except the last user turn
    text: str  # the normalised last user turn ("" when the request does not end with one)
    history: bool = False  # the context holds an earlier turn, not only system prompts (ResponseCache.put)

    @property
    def semantic_ok(self) -> bool:
        """Semantic matching only makes sense for a request that ends with a user question, and
        only for one of question size: the embedder reads 256 wordpieces (two long texts alike
        in their head look identical to it), and the verifier's pair features grow with the
        square of the words, under the cache's lock (a 50 kB question stalled every tenant's
        lookup for seconds). Longer texts are answered from the cache exactly or not at all."""
        return 0 < len(self.text) <= SEMANTIC_MAX_CHARS


def request_keys(body: Mapping[str, Any], route: str, tenant: str) -> RequestKeys:
    """Keys of a chat-completions body; `route` is the routing profile or the model the client named."""
    messages = [_message(m) for m in body.get("messages") or []]
    params = {k: _number(v) for k, v in body.items() if k not in NOT_ANSWER_FIELDS and v is not None}
    shared = {
        "route": route,
        "tenant": tenant,
        "tools": body.get("tools") or [],
        "functions": body.get("functions") or [],
        "response_format": body.get("response_format") or {},
        "params": params,
    }
    # The context (everything but the last message) is serialised and hashed once; the exact key
    # chains its digest with the last message.
    last = messages[-1] if messages else None
    # Who asks is context too (`name` in a group chat): only the last message's text is matched.
    asker = {k: v for k, v in last.items() if k != "content"} if last is not None else {}
    context = _digest({**shared, "context": messages[:-1], "asker": asker})
    exact = _digest({"context": context, "last": last})
    if last is not None and last["role"] == "user" and isinstance(last["content"], str) and last["content"]:
        history = any(m.get("role") not in ("system", "developer") for m in messages[:-1])
        return RequestKeys(exact=exact, fingerprint=context, text=last["content"], history=history)
    return RequestKeys(exact=exact, fingerprint=exact, text="")
