"""Data contracts shared by the decision library, the gateway and the training jobs.

Everything that crosses a module boundary is one of these frozen dataclasses, so the
gateway, the offline jobs and the notebooks agree on one vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class RoutingRequest:
    """What the router sees of one request.

    `text` is what gets embedded: for chat requests the last user turn, never the
    (possibly 48 KB) agent system prompt — see `router.request_view`.
    """

    text: str
    input_tokens: int = 0
    n_turns: int = 1
    has_tools: bool = False
    needs: frozenset[str] = frozenset()  # capabilities the request requires: tools, json, vision
    max_output_tokens: int | None = None
    answers: int = 1  # `n`: the upstream bills every answer's output
    system_text: str = ""
    # Inline files and audio, which `input_tokens` leaves out (see `router.request_view`): their
    # decoded size, the most a provider may bill for them, and parts that only refer to content
    # stored elsewhere (a `file_id`), whose size nobody here can know.
    attachment_bytes: int = 0
    attachment_tokens: int = 0
    unsized_attachments: int = 0
    # The part of `input_tokens` the images make up: governance's reservation adds it to the text's
    # bytes (service/governance/hook.py) instead of reading every image's header a second time.
    image_tokens: int = 0
    # Prompt caching (`router.policy.prompt_cache_cost`): the prefix every conversation of an agent
    # starts with (system prompt and tool definitions), what a provider's cache keeps of this
    # request as the adapters mark it (the whole prompt once the conversation has an assistant
    # turn, else that prefix), and for each model the tokens of this prompt its provider holds
    # from an earlier request, read back at its cached price.
    prefix_tokens: int = 0
    cacheable_tokens: int = 0
    warm_tokens: Mapping[str, int] = field(default_factory=dict)

    def attachment_tokens_within(self, context_window: int) -> int:
        """The most a model with this window may bill for the attachments: a longer prompt is
        refused by the provider, not billed."""
        return min(self.attachment_tokens, context_window)


@dataclass(frozen=True)
class Constraints:
    """Hard limits; a model that breaks one is never chosen, whatever its utility."""

    allowed_models: frozenset[str] | None = None
    excluded_models: frozenset[str] = frozenset()
    required_tags: frozenset[str] = frozenset()  # e.g. {"local"} for sensitive data
    max_cost_usd: float | None = None
    max_latency_s: float | None = None

    def in_scope(self, model: str, tags: frozenset[str]) -> bool:
        """Whether these limits let a model with these tags answer (allowed, not excluded, tagged)."""
        return ((self.allowed_models is None or model in self.allowed_models) and model not in self.excluded_models
                and self.required_tags <= tags)


@dataclass(frozen=True)
class LiveStats:
    """Per-model live health, measured by the gateway and read by the policy."""

    ewma_latency_s: float | None = None
    ewma_ttft_s: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0
    healthy: bool = True  # False while the circuit breaker is open or RPM/TPM is exhausted
    # Why an unhealthy model is left out when it is no wait that a retry outlasts (a key not set);
    # None reads as "unhealthy (circuit open or rate limit reached)".
    excluded: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One model's predicted outcome for one request, with its rank in the decision."""

    model: str
    p_good: float
    p_good_std: float
    output_tokens: float
    cost_usd: float
    latency_s: float
    utility: float
    excluded: str | None = None  # why the model may not be chosen; None when eligible


@dataclass(frozen=True)
class Decision:
    """The routing decision: the chosen model, all candidates ranked, and why."""

    model: str
    candidates: tuple[Candidate, ...]
    reason: str
    knob: float
    propensity: float = 1.0  # probability with which `model` was chosen (exploration logs it)
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)

    def fallbacks(self) -> list[str]:
        """Eligible models after the chosen one, in rank order: the failover chain."""
        return [c.model for c in self.candidates if c.excluded is None and c.model != self.model]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "reason": self.reason,
            "knob": self.knob,
            "propensity": self.propensity,
            "candidates": [c.__dict__ for c in self.candidates],
        }

