"""Per-key RPM/TPM for a single gateway process (the embedded default).

Same sliding-minute estimate as the Redis limiter (previous minute weighted by the share of
it still inside the window, plus the current minute), so behaviour does not change when a
deployment moves to Redis; only the sharing does.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._tokens: dict[tuple[str, int], int] = defaultdict(int)
        self._lock = threading.Lock()
        self._trimmed = -1  # the minute the tables were last trimmed for

    def _used(self, table: dict[tuple[str, int], int], key_id: str, minute: int, frac: float) -> float:
        return table.get((key_id, minute), 0) + table.get((key_id, minute - 1), 0) * (1 - frac)

    def _trim(self, minute: int) -> None:
        # Once a minute, on either path: keys without limits only ever add tokens, and their
        # minutes would otherwise pile up until a limited key's request came by.
        if minute == self._trimmed:
            return
        self._trimmed = minute
        for table in (self._requests, self._tokens):
            for k in [k for k in table if k[1] < minute - 1]:
                del table[k]

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, now: float | None = None) -> str | None:
        if rpm is None and tpm is None:
            return None
        now = time.time() if now is None else now
        minute, frac = int(now // 60), (now % 60) / 60
        with self._lock:
            self._trim(minute)
            if rpm is not None and self._used(self._requests, key_id, minute, frac) + 1 > rpm:
                return "rpm"
            if tpm is not None and self._used(self._tokens, key_id, minute, frac) + tokens > tpm:
                return "tpm"
            self._requests[(key_id, minute)] += 1
            self._tokens[(key_id, minute)] += tokens
        return None

    def add_tokens(self, key_id: str, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        now = time.time() if now is None else now
        minute = int(now // 60)
        with self._lock:
            self._trim(minute)
            self._tokens[(key_id, minute)] += tokens
