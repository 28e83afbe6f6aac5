"""FAISS nearest-neighbour search over cached questions, one index per context fingerprint.

A semantic hit needs the same context fingerprint, so each fingerprint gets its own index
and a search never has to filter out other tenants' or other conversations' entries. An
index starts flat (exact inner product) and becomes HNSW once it holds `hnsw_from` vectors,
the size past which a flat scan on one core gets slower than HNSW (measured by
bench/bench_cache.py, see docs/BENCHMARKS.md). HNSW cannot delete, so removed ids are
tombstoned and the index is rebuilt when tombstones reach a quarter of it.
"""
from __future__ import annotations

import numpy as np

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64


def _faiss():
    import faiss  # imported on first use: the gateway starts without paying for it when the cache is off

    return faiss


class Bucket:
    """The vectors of one context fingerprint."""

    def __init__(self, dim: int, hnsw_from: int):
        self.dim = dim
        self.hnsw_from = hnsw_from
        self.live: set[int] = set()
        self.dead: set[int] = set()
        self.hnsw = False
        self._index = self._new(hnsw=False)

    def _new(self, hnsw: bool):
        faiss = _faiss()
        if hnsw:
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)  # faiss's wrapper keeps a reference to `inner`

    def __len__(self) -> int:
        return len(self.live)

    def add(self, entry_id: int, vector: np.ndarray) -> None:
        self._index.add_with_ids(vector.reshape(1, -1).astype(np.float32), np.array([entry_id], dtype=np.int64))
        self.live.add(entry_id)
        if not self.hnsw and len(self.live) >= self.hnsw_from:
            self._rebuild(hnsw=True)

    def add_many(self, ids: list[int], vectors: np.ndarray) -> None:
        """Bulk load (start-up): one build instead of one insert per vector."""
        if not ids:
            return
        self.live.update(ids)
        if not self.hnsw and len(self.live) >= self.hnsw_from:
            old = self._live_vectors(sorted(self.live - set(ids)))
            self.hnsw = True
            self._index = self._new(hnsw=True)
            self.dead.clear()
            if len(old[0]):
                self._index.add_with_ids(old[1], np.array(old[0], dtype=np.int64))
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.array(ids, dtype=np.int64))

    def remove(self, entry_id: int) -> None:
        if entry_id not in self.live:
            return
        self.live.discard(entry_id)
        if self.hnsw:
            self.dead.add(entry_id)
            if len(self.dead) * 4 >= len(self.live) + len(self.dead):
                self._rebuild(hnsw=len(self.live) >= self.hnsw_from)
        else:
            self._index.remove_ids(np.array([entry_id], dtype=np.int64))

    def vector(self, entry_id: int) -> np.ndarray:
        return self._index.reconstruct(int(entry_id))

    def _live_vectors(self, ids: list[int]) -> tuple[list[int], np.ndarray]:
        vecs = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, entry_id in enumerate(ids):
            vecs[i] = self._index.reconstruct(int(entry_id))
        return ids, vecs

    def _rebuild(self, hnsw: bool) -> None:
        ids, vecs = self._live_vectors(sorted(self.live))
        self.hnsw = hnsw
        self._index = self._new(hnsw)
        self.dead.clear()
        if ids:
            self._index.add_with_ids(vecs, np.array(ids, dtype=np.int64))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to `k` live (entry id, cosine) pairs, best first."""
        if not self.live:
            return []
        want = min(k + len(self.dead), self._index.ntotal)
        sims, ids = self._index.search(vector.reshape(1, -1).astype(np.float32), want)
        out = [(int(i), float(s)) for s, i in zip(sims[0], ids[0]) if i >= 0 and int(i) in self.live]
        return out[:k]


class SemanticIndex:
    """Buckets by context fingerprint."""

    def __init__(self, dim: int, hnsw_from: int):
        self.dim = dim
        self.hnsw_from = hnsw_from
        self.buckets: dict[str, Bucket] = {}

    def _bucket(self, fingerprint: str) -> Bucket:
        b = self.buckets.get(fingerprint)
        if b is None:
            b = self.buckets[fingerprint] = Bucket(self.dim, self.hnsw_from)
        return b

    def add(self, fingerprint: str, entry_id: int, vector: np.ndarray) -> None:
        self._bucket(fingerprint).add(entry_id, vector)

    def add_many(self, fingerprint: str, ids: list[int], vectors: np.ndarray) -> None:
        self._bucket(fingerprint).add_many(ids, vectors)

    def remove(self, fingerprint: str, entry_id: int) -> None:
        b = self.buckets.get(fingerprint)
        if b is None:
            return
        b.remove(entry_id)
        if not b.live:
            del self.buckets[fingerprint]

    def __contains__(self, fingerprint: str) -> bool:
        return fingerprint in self.buckets

    def search(self, fingerprint: str, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        b = self.buckets.get(fingerprint)
        return b.search(vector, k) if b is not None else []

    def vector(self, fingerprint: str, entry_id: int) -> np.ndarray:
        return self.buckets[fingerprint].vector(entry_id)

    def clear(self) -> None:
        self.buckets.clear()
