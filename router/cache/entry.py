"""One cached answer and its metadata."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
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
    vector: np.ndarray | None = None  # unit embedding of `text`; None for exact-only entries
    response: dict[str, Any] | None = None  # the chat.completion body; loaded from the store on a hit
