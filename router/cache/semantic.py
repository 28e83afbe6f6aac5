"""FAISS nearest-neighbour search over cached questions, one index per context fingerprint.

A semantic hit needs the same context fingerprint, so each fingerprint gets its own index
and a search never has to filter out other tenants' or other conversations' entries. An
index starts flat (exact inner product) and becomes HNSW once it holds `hnsw_from` vectors,
the size past which a flat scan on one core gets slower than HNSW (measured by
bench/bench_cache.py, see docs/BENCHMARKS.md). HNSW cannot delete, so removed ids are
tombstoned and the index is rebuilt when tombstones reach a quarter of it.

Building an HNSW index is the slow part of a restart (about 45 s for 100,000 vectors in one
context on one core), so a clean shutdown writes each HNSW index to a snapshot folder and the
next start reads it back instead. SQLite stays the source of truth: a snapshot is used only if
every vector it shares with the loaded rows is bit for bit the row's vector; rows it lacks are
added, ids it has that are gone become tombstones, and anything else (a crash, a damaged or
foreign file) means a rebuild.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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

    def save(self, path: Path) -> None:
        _faiss().write_index(self._index, str(path))

    @classmethod
    def from_snapshot(cls, path: Path, dim: int, hnsw_from: int, ids: list[int], vectors: np.ndarray) -> "Bucket | None":
        """The saved index of these rows, or None where it does not hold exactly their vectors."""
        faiss = _faiss()
        index = faiss.read_index(str(path))
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        if not isinstance(inner, faiss.IndexHNSWFlat) or index.d != dim:
            return None
        saved = faiss.vector_to_array(index.id_map)  # external id of each stored vector, in storage order
        row = {i: j for j, i in enumerate(ids)}
        for start in range(0, len(saved), 16384):  # compare in slices: a full copy would double the memory
            stored = inner.reconstruct_n(start, min(16384, len(saved) - start))
            mine = [k for k, i in enumerate(saved[start:start + len(stored)]) if int(i) in row]
            if not np.array_equal(stored[mine], vectors[[row[int(saved[start + k])] for k in mine]]):
                return None
        saved_ids = {int(i) for i in saved}
        bucket = cls(dim, hnsw_from)
        bucket.hnsw, bucket._index = True, index
        bucket.live = set(ids)
        bucket.dead = saved_ids - bucket.live
        new = [j for j, i in enumerate(ids) if i not in saved_ids]
        if new:
            index.add_with_ids(np.ascontiguousarray(vectors[new], dtype=np.float32), np.array([ids[j] for j in new], dtype=np.int64))
        if len(bucket.dead) * 4 >= len(bucket.live) + len(bucket.dead):
            bucket._rebuild(hnsw=len(bucket.live) >= hnsw_from)
        return bucket

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

    def save(self, folder: Path) -> int:
        """Write every HNSW index (flat ones rebuild in milliseconds) into `folder`, replacing
        what was there; returns how many were written."""
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        old = folder.with_name(f"{folder.name}.{os.getpid()}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            manifest = {}
            for fingerprint, bucket in self.buckets.items():
                if bucket.hnsw:
                    name = hashlib.sha256(fingerprint.encode()).hexdigest()[:32] + ".faiss"
                    bucket.save(tmp / name)
                    manifest[name] = fingerprint
            (tmp / "manifest.json").write_text(json.dumps(manifest))
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
        finally:  # after a swap only `old` is left; after a failure, the half-written `tmp`
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return len(manifest)

    def restore(self, folder: Path | None, rows: dict[str, tuple[list[int], np.ndarray]]) -> int:
        """Load the rows' vectors, reusing `folder`'s snapshots where they match (see the module
        docstring); returns how many buckets came from a snapshot. The snapshot is consumed:
        only the next clean shutdown writes a new one."""
        snapshots: dict[str, Path] = {}
        if folder is not None and (folder / "manifest.json").exists():
            try:
                manifest = json.loads((folder / "manifest.json").read_text())
                snapshots = {fp: folder / name for name, fp in manifest.items()}
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("cache index snapshot %s is unreadable (%s); rebuilding the indexes", folder, exc)
        reused = 0
        for fingerprint, (ids, vectors) in rows.items():
            bucket = None
            if fingerprint in snapshots and len(ids) >= self.hnsw_from:
                try:
                    bucket = Bucket.from_snapshot(snapshots[fingerprint], self.dim, self.hnsw_from, ids, vectors)
                except (RuntimeError, OSError) as exc:  # faiss reports a damaged file as RuntimeError
                    log.warning("cache index snapshot %s is unreadable (%s); rebuilding it", snapshots[fingerprint], exc)
            if bucket is not None:
                self.buckets[fingerprint] = bucket
                reused += 1
            else:
                self.add_many(fingerprint, ids, vectors)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return reused

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
