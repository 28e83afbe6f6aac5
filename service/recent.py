"""The newest entries of a mapping, the oldest dropped past a bound: what the gateway remembers
per request id or prompt (for feedback, regenerations, tool loops, cache rejections) must not
grow with traffic."""
from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict, Generic[K, V]):
    """Not thread-safe: callers hold their own lock."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> None:
        """Set `key` as the newest entry, dropping the oldest past the limit."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
