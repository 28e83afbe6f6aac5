"""One cached answer's metadata (the answer itself is in the store)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# Slots: one per cached answer, up to max_entries of them (an instance dict costs ~50 bytes more).
@dataclass(slots=True)
class Entry:
    id: int
    exact: str  # normalised exact key (includes tenant and route)
    fingerprint: str  # context fingerprint: semantic matches only within one
    tenant: str
    route: str
    text: str  # normalised last user turn ("" for requests that cannot match semantically)
    model: str  # the upstream model that produced the answer
    cost_usd: float  # what the answer cost upstream: the saving on every hit
    created: float
    expires: float
    size: int = 0  # bytes it holds in memory, estimated (ResponseCache.bytes_held)
    vector: np.ndarray | None = None  # unit embedding of `text` on its way into the index; None for exact-only entries
