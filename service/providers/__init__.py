"""Upstream LLM providers behind one interface: OpenAI chat body in, OpenAI chat completion out."""
from service.providers.base import RETRYABLE_KINDS, ErrorKind, Provider, UpstreamError
from service.providers.registry import SIMULATED_URL, build_provider

__all__ = ["ErrorKind", "Provider", "RETRYABLE_KINDS", "SIMULATED_URL", "UpstreamError", "build_provider"]
