"""Typed reads of an upstream answer's fields: a value of the wrong type is a `malformed`
answer (which fails over), never an AttributeError or TypeError deep in an adapter."""
from __future__ import annotations

from typing import Any

from service.providers.base import UpstreamError


def as_object(value: Any, what: str) -> dict[str, Any]:
    """A JSON object from an upstream answer: {} when absent, malformed when anything else."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise UpstreamError("malformed", f"{what} is not a JSON object")


def as_list(value: Any, what: str) -> list[Any]:
    """A JSON array from an upstream answer: [] when absent, malformed when anything else."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise UpstreamError("malformed", f"{what} is not a JSON array")


def as_text(value: Any, what: str) -> str:
    """A string from an upstream answer: "" when absent, malformed when anything else."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise UpstreamError("malformed", f"{what} is not a string")


def as_int(value: Any, what: str) -> int:
    """A count or index from an upstream answer: 0 when absent, malformed when not a number."""
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        raise UpstreamError("malformed", f"{what} is not a number") from None


def as_count(value: Any, what: str) -> int | None:
    """A token count from an upstream answer: None when absent, so that the gateway estimates it
    (`service/usage_fill.py`) instead of billing 0; malformed when not a number."""
    return None if value is None else as_int(value, what)
