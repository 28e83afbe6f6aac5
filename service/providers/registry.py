"""Provider construction from config: one adapter class per wire format, dispatched on `kind`.

`simulated` providers speak the OpenAI wire format (see service/simulator.py), so they use the
OpenAI-compatible adapter; `serve` replaces their `simulated://` base_url with the running
simulator's URL before building them.
"""
from __future__ import annotations

from router.config import ProviderSpec
from service.providers.anthropic import AnthropicProvider
from service.providers.base import Provider
from service.providers.gemini import GeminiProvider
from service.providers.openai_compat import OpenAICompatProvider

ADAPTERS: dict[str, type[Provider]] = {
    "openai": OpenAICompatProvider,
    "simulated": OpenAICompatProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}

SIMULATED_URL = "simulated://"


def build_provider(spec: ProviderSpec) -> Provider:
    if spec.base_url.startswith(SIMULATED_URL):
        raise ValueError(
            f"provider base_url {spec.base_url!r} must be replaced with the simulator's URL before use "
            "(service.simulator.start_simulator returns it)"
        )
    return ADAPTERS[spec.kind](spec)
