"""A context with one vector, and no FAISS index (`Single`).

Most contexts of agent traffic hold one entry (each turn's history is new). A FAISS index, its
id map and the Python objects around them took 1.6 KB on top of the vector's 1.5 KB; one vector
is compared by one dot product. router/cache/semantic.py makes an index of the second vector.
"""
from __future__ import annotations

import numpy as np


class Single:
    """The only vector of a context. The score is the float32 inner product, as IndexFlatIP's."""

    __slots__ = ("id", "vec")
    hnsw = False

    def __init__(self, entry_id: int, vector: np.ndarray):
        self.id = entry_id
        self.vec = np.array(vector, dtype=np.float32).reshape(-1)

    def __len__(self) -> int:
        return 1

    def vector(self, entry_id: int) -> np.ndarray:
        if entry_id != self.id:
            raise KeyError(entry_id)
        return self.vec

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        return [(self.id, float(np.dot(self.vec, np.asarray(vector, dtype=np.float32).reshape(-1))))]
