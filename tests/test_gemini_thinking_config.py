"""`reasoning_effort` as Gemini's thinkingConfig, per model generation (the request body alone)."""
from __future__ import annotations

import pytest

from tests.test_providers_gemini import MODEL


@pytest.mark.parametrize("upstream, effort, thinking", [
    ("gemini-2.5-flash", "low", {"thinkingBudget": 1024}),
    ("gemini-2.5-flash", "high", {"thinkingBudget": 24576}),
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
    ("gemini-2.5-pro", "none", {"thinkingBudget": 128}),  # 2.5 Pro cannot stop thinking: its least
    ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "low"}),
    ("gemini-3.1-flash", "medium", {"thinkingLevel": "high"}),
    ("gemini-2.0-flash", "high", None),  # no thinking to set
])
def test_reasoning_effort_is_a_thinking_config(upstream, effort, thinking):
    from service.providers.gemini import to_gemini

    model = MODEL.model_copy(update={"upstream": upstream})
    config = to_gemini(model, {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}).get("generationConfig", {})
    assert config.get("thinkingConfig") == thinking
