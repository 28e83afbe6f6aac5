"""FAISS nearest-neighbour search over cached questions, one index per context fingerprint.

A semantic hit needs the same context fingerprint, so each fingerprint gets its own index
and a search never has to filter out other tenants' or other conversations' entries. A context
with one vector, as most are in agent traffic, has no index (`Single`, router/cache/single.py):
the second vector makes one, and an index left with one live vector goes back to a `Single`. An
index starts flat (exact inner product) and becomes HNSW once it holds `hnsw_from` vectors, the
size past which a flat scan on one core gets slower than HNSW (measured by bench/bench_cache.py, see docs/BENCHMARKS.md).

HNSW cannot delete, so a removed entry's position is tombstoned in a bitmap that FAISS reads
during the search (an `IDSelectorNot` over an `IDSelectorBitmap`): tombstones never reach the
results, so a search asks for k neighbours however many there are. Flat indexes tombstone the
same way (FAISS's own removal moves every later vector). When tombstones reach a quarter of an
index it is rebuilt from its live vectors: a flat one at once (a few milliseconds), an HNSW one,
and the switch from flat to HNSW, on a background thread, since building HNSW takes seconds to
a minute and a half. That thread copies the live vectors a slice at a time under the caller's
lock, builds outside it while the old index keeps serving every search, add and removal, then
takes the lock again to add what was stored meanwhile, tombstone what was removed meanwhile
and swap the new index in. A position is never reused, so "tombstoned since the copy" is
one bitmap read, and an entry id SQLite hands out again is a new position, not the old vector.

Building an HNSW index is the slow part of a restart (about 45 s for 100,000 vectors in one
context on one core), so a clean shutdown writes each HNSW index to a snapshot folder and the
next start reads it back instead. SQLite stays the source of truth: a snapshot is used only if
every vector it shares with the loaded rows is bit for bit the row's vector; rows it lacks are
added, ids it has that are gone become tombstones, and anything else (a crash, a shutdown during
the switch to HNSW, a damaged or foreign file) means a rebuild, in the background: the context
serves from a flat index (exact, slower) until its graph is built.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.cache.single import Single

log = logging.getLogger(__name__)

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# 32, not 64: on 100,000 QQP question vectors both find the same nearest neighbours (top-1 recall
# 0.984 from efSearch 24 on, against exact search; the misses are duplicate vectors) and a lookup
# at 100,000 entries takes p50 1.02-1.04 ms against 1.16-1.20 ms (docs/BENCHMARKS.md).
HNSW_EF_SEARCH = 32
COPY_SLICE = 4096  # vectors copied per hold of the lock during a rebuild: 6 MB, about a millisecond
CATCH_UP = 32  # adds made during a rebuild that the swap inserts under the lock (~0.5 ms each in HNSW); more are inserted before it
BUILD_SLICE = 1024  # vectors inserted between checks that the build is still wanted (a shutdown stops it within ~0.5 s)
RETRY_AFTER_S = 60.0  # after a failed background rebuild the old index serves on this long before another try


def _faiss():
    import faiss  # imported on first use: the gateway starts without paying for it when the cache is off

    return faiss


def build_index(dim: int, hnsw: bool, ids: np.ndarray, vectors: np.ndarray):
    """A new index holding `vectors` under `ids`, in that order (positions 0, 1, ...)."""
    faiss = _faiss()
    if hnsw:
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        inner = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(inner)  # faiss's wrapper keeps a reference to `inner`
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


@dataclass
class Rebuild:
    """A new index being built from a bucket's live vectors: `positions[j]` is the old position
    of the vector at new position j, `live` the new position of each entry id copied so far."""

    hnsw: bool
    generation: int  # the bucket's index generation it started from: a newer index makes it stale
    upto: int  # the old index's size when it was last copied: later positions are still to copy
    positions: np.ndarray
    ids: np.ndarray
    index: Any = None
    live: dict[int, int] = field(default_factory=dict)

    def extend(self, positions: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        base = len(self.positions)
        self.positions = np.concatenate([self.positions, positions])
        self.ids = np.concatenate([self.ids, ids])
        self.live.update((int(i), base + j) for j, i in enumerate(ids))


class Bucket:
    """The vectors of one context fingerprint. Not thread-safe: SemanticIndex's lock guards it."""

    def __init__(self, dim: int, hnsw_from: int):
        self.dim = dim
        self.hnsw_from = hnsw_from
        self.live: dict[int, int] = {}  # entry id -> its position in the index
        self.rebuilding = False
        self.generation = 0  # bumped at every swap: a background job started before it is stale
        self.retry_at = 0.0  # monotonic time before which a failed rebuild is not tried again
        self._swap(build_index(dim, False, np.empty(0, np.int64), np.empty((0, dim), np.float32)), False, np.zeros(0, np.uint8))

    def _swap(self, index, hnsw: bool, dead_bits: np.ndarray) -> None:
        self.generation += 1
        self._index = index
        self._inner = _faiss().downcast_index(index.index)
        self.hnsw = hnsw
        self._dead_bits = dead_bits  # bit p set: position p is a tombstone (little-endian bit order, as FAISS reads it)
        self.dead = int(np.unpackbits(dead_bits).sum())
        self._filter()

    def _filter(self) -> None:
        """Search parameters that skip the tombstones, reading `_dead_bits` in place (so a new
        tombstone is seen at once); rebuilt only when the bitmap is reallocated."""
        if not self.dead:
            self._params = None
            return
        faiss = _faiss()
        bitmap = faiss.IDSelectorBitmap(len(self._dead_bits), faiss.swig_ptr(self._dead_bits))
        skip = faiss.IDSelectorNot(bitmap)
        if self.hnsw:
            # Twice the candidates while tombstones are skipped: with the 30 nearest entries of a
            # query dead (tests/test_cache_eviction.py), efSearch 32 missed its nearest live one.
            params = faiss.SearchParametersHNSW(sel=skip, efSearch=2 * HNSW_EF_SEARCH)
        else:
            params = faiss.SearchParameters(sel=skip)
        self._params = params
        self._selectors = (self._dead_bits, bitmap, skip)  # SWIG keeps none of these alive by itself

    def _is_dead(self, positions: np.ndarray) -> np.ndarray:
        byte = positions >> 3
        inside = byte < len(self._dead_bits)
        dead = np.zeros(len(positions), dtype=bool)
        dead[inside] = (self._dead_bits[byte[inside]] >> (positions[inside] & 7)) & 1
        return dead

    def __len__(self) -> int:
        return len(self.live)

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        start = self._index.ntotal
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        self.live.update((int(i), start + j) for j, i in enumerate(ids))

    def add_many(self, ids: list[int], vectors: np.ndarray) -> None:
        """Bulk append, as they come: a flat index stays flat until `compact` or a rebuild."""
        if ids:
            self._append(np.asarray(ids, dtype=np.int64), vectors)

    def remove(self, entry_id: int) -> None:
        position = self.live.pop(entry_id, None)
        if position is None:
            return
        byte = position >> 3
        if byte >= len(self._dead_bits):
            grown = np.zeros(max(byte + 1, 2 * len(self._dead_bits), 64), dtype=np.uint8)
            grown[:len(self._dead_bits)] = self._dead_bits
            self._dead_bits = grown
            self._params = None
        self._dead_bits[byte] |= np.uint8(1 << (position & 7))
        self.dead += 1
        if self._params is None:
            self._filter()

    def wants_rebuild(self) -> bool:
        if self.rebuilding:
            # Emptied below the HNSW size meanwhile: an exact flat index now (milliseconds) beats
            # searching a graph whose tombstones pile up until the job ends (recall 0.62 at 97 %).
            return self.hnsw and len(self.live) < self.hnsw_from
        if time.monotonic() < self.retry_at and len(self.live) >= self.hnsw_from:
            return False  # only the background build failed: compacting a flat index still runs
        return (not self.hnsw and len(self.live) >= self.hnsw_from) or (self.dead > 0 and self.dead * 4 >= len(self.live) + self.dead)

    def vector(self, entry_id: int) -> np.ndarray:
        return self._inner.reconstruct(self.live[entry_id])

    # ---- rebuilding: each step but the build runs under the lock ----

    def begin_rebuild(self) -> Rebuild:
        positions = np.fromiter(self.live.values(), dtype=np.int64, count=len(self.live))
        ids = np.fromiter(self.live.keys(), dtype=np.int64, count=len(self.live))
        return Rebuild(hnsw=len(self.live) >= self.hnsw_from, generation=self.generation, upto=self._index.ntotal,
                       positions=positions, ids=ids)

    def copy(self, positions: np.ndarray) -> np.ndarray:
        if not len(positions):
            return np.empty((0, self.dim), dtype=np.float32)
        return self._inner.reconstruct_batch(positions)

    def added_since(self, job: Rebuild) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, ids, vectors) of the live entries added since `job` last copied; marks them copied."""
        positions = np.arange(job.upto, self._index.ntotal, dtype=np.int64)
        positions = positions[~self._is_dead(positions)]
        ids = np.array([self._index.id_map.at(int(p)) for p in positions], dtype=np.int64)
        job.upto = self._index.ntotal
        return positions, ids, self.copy(positions)

    def finish_rebuild(self, job: Rebuild) -> None:
        """Swap `job`'s index in: what was removed since it was copied becomes a tombstone there."""
        dead = self._is_dead(job.positions)
        for j in np.flatnonzero(dead):
            entry_id = int(job.ids[j])
            if job.live.get(entry_id) == j:  # not when the id was handed out again and re-added later
                del job.live[entry_id]
        self._swap(job.index, job.hnsw, np.packbits(dead, bitorder="little"))
        self.live = job.live
        self.rebuilding = False

    def compact(self) -> None:
        """Rebuild now, holding the caller's lock throughout: for start-up and small flat indexes."""
        job = self.begin_rebuild()
        job.index = build_index(self.dim, job.hnsw, job.ids, self.copy(job.positions))
        job.live = {int(i): j for j, i in enumerate(job.ids)}
        self.finish_rebuild(job)

    # ---- persistence ----

    def save(self, path: Path) -> None:
        _faiss().write_index(self._index, str(path))

    @classmethod
    def from_snapshot(cls, path: Path, dim: int, hnsw_from: int, ids: list[int], vectors: np.ndarray) -> Bucket | None:
        """The saved index of these rows, or None where it does not hold exactly their vectors."""
        faiss = _faiss()
        index = faiss.read_index(str(path))
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        if not isinstance(inner, faiss.IndexHNSWFlat) or index.d != dim:
            return None
        saved = faiss.vector_to_array(index.id_map)  # external id of each stored vector, in storage order
        # An id SQLite handed out again sits at several positions; a live entry is always the last one.
        uniq, first_from_end = np.unique(saved[::-1], return_index=True)
        last = len(saved) - 1 - first_from_end
        id_array = np.asarray(ids, dtype=np.int64)
        kept = np.isin(uniq, id_array)
        kept_ids, positions = uniq[kept], last[kept]
        row = {i: j for j, i in enumerate(ids)}
        rows = np.fromiter((row[int(i)] for i in kept_ids), dtype=np.int64, count=len(kept_ids))
        for start in range(0, len(positions), 16384):  # compare in slices: a full copy would double the memory
            if not np.array_equal(inner.reconstruct_batch(positions[start:start + 16384]), vectors[rows[start:start + 16384]]):
                return None
        dead = np.ones(len(saved), dtype=bool)
        dead[positions] = False
        bucket = cls(dim, hnsw_from)
        bucket._swap(index, True, np.packbits(dead, bitorder="little"))
        bucket.live = dict(zip(kept_ids.tolist(), positions.tolist()))
        new = ~np.isin(id_array, uniq)
        if new.any():
            bucket._append(id_array[new], vectors[new])
        return bucket

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to `k` live (entry id, cosine) pairs, best first."""
        if not self.live:
            return []
        query = vector.reshape(1, -1).astype(np.float32)
        want = min(k, len(self.live))
        if self.dead:
            # A few more neighbours without the tombstone filter first: the filter doubles efSearch,
            # and with it the search's cost (255 against 135 µs at 100,000 entries), though a cache
            # keeps some tombstones nearly always (a replaced answer, an expired one). Only where
            # tombstones crowd out the live neighbours does the filtered search run after it.
            sims, positions = self._inner.search(query, min(want + min(self.dead, k), self._index.ntotal))
            bits, size = self._dead_bits, len(self._dead_bits)
            found = [(s, p) for s, p in zip(sims[0].tolist(), positions[0].tolist())
                     if p >= 0 and not (p >> 3 < size and bits[p >> 3] >> (p & 7) & 1)]
            if len(found) >= want:
                return self._ids(found[:want])
        sims, positions = self._inner.search(query, want, params=self._params)
        return self._ids(zip(sims[0].tolist(), positions[0].tolist()))

    def _ids(self, found) -> list[tuple[int, float]]:
        """(entry id, cosine) of (cosine, position) pairs; FAISS's -1 (no neighbour) dropped."""
        return [(self._index.id_map.at(p), s) for s, p in found if p >= 0]


class SemanticIndex:
    """Buckets by context fingerprint. The caller holds `lock` around every call; the thread
    that rebuilds HNSW indexes takes it for each step that touches a bucket."""

    def __init__(self, dim: int, hnsw_from: int, lock: threading.RLock | None = None):
        self.dim = dim
        self.hnsw_from = hnsw_from
        self.buckets: dict[str, Bucket | Single] = {}
        self._lock = lock or threading.RLock()
        self._queue: deque[str] = deque()
        self._worker: threading.Thread | None = None
        self._stopped = False

    def add(self, fingerprint: str, entry_id: int, vector: np.ndarray) -> None:
        self.add_many(fingerprint, [entry_id], vector.reshape(1, -1))

    def add_many(self, fingerprint: str, ids: list[int], vectors: np.ndarray) -> None:
        """Bulk load: searchable at once through a flat index; one past `hnsw_from` switches to
        HNSW in the background, so a start without a snapshot (after a crash) does not wait a
        minute for the graph before serving."""
        if not ids:
            return
        b = self.buckets.get(fingerprint)
        if b is None and len(ids) == 1:
            self.buckets[fingerprint] = Single(ids[0], vectors[0])
            return
        if not isinstance(b, Bucket):
            if isinstance(b, Single):  # its vector goes first, as the older one
                ids, vectors = [b.id, *ids], np.vstack([b.vec[None, :], vectors])
            b = self.buckets[fingerprint] = Bucket(self.dim, self.hnsw_from)
        b.add_many(ids, vectors)
        self._maintain(fingerprint, b)

    def remove(self, fingerprint: str, entry_id: int) -> None:
        b = self.buckets.get(fingerprint)
        if b is None:
            return
        if not isinstance(b, Bucket):
            if b.id == entry_id:
                del self.buckets[fingerprint]
            return
        b.remove(entry_id)
        if not b.live:
            del self.buckets[fingerprint]
        elif len(b.live) == 1:  # a rebuild under way sees the bucket replaced and stops
            (last,) = b.live
            self.buckets[fingerprint] = Single(last, b.vector(last))
        else:
            self._maintain(fingerprint, b)

    def _maintain(self, fingerprint: str, b: Bucket) -> None:
        if not b.wants_rebuild():
            return
        if len(b.live) < self.hnsw_from:
            b.compact()  # a flat index of fewer than hnsw_from vectors: copied in a few milliseconds (a job running is now stale)
            return
        if self._stopped:
            return
        b.rebuilding = True
        self._queue.append(fingerprint)
        if self._worker is None:
            self._worker = threading.Thread(target=self._rebuild_queued, name="cache-index-rebuild", daemon=True)
            self._worker.start()

    def _rebuild_queued(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._stopped:
                    self._worker = None
                    return
                fingerprint = self._queue.popleft()
                bucket = self.buckets.get(fingerprint)
                if not isinstance(bucket, Bucket) or not bucket.rebuilding:
                    continue
                job = bucket.begin_rebuild()
            try:
                self._rebuild(fingerprint, bucket, job)
            except Exception:  # the old index serves on; a failing build is not retried at every put
                log.exception("cache: rebuilding the index of a context failed; retrying in %.0f s at the earliest",
                              RETRY_AFTER_S)
                with self._lock:
                    if bucket.generation == job.generation:
                        bucket.rebuilding = False
                        bucket.retry_at = time.monotonic() + RETRY_AFTER_S

    def _current(self, fingerprint: str, bucket: Bucket, job: Rebuild) -> bool:
        """Whether `job` is still wanted: not shut down, its bucket not emptied or cleared, and
        no newer index swapped in since it began. The caller holds the lock."""
        return not self._stopped and self.buckets.get(fingerprint) is bucket and bucket.generation == job.generation

    def _rebuild(self, fingerprint: str, bucket: Bucket, job: Rebuild) -> None:
        vectors = np.empty((len(job.positions), self.dim), dtype=np.float32)
        for start in range(0, len(job.positions), COPY_SLICE):
            with self._lock:
                if not self._current(fingerprint, bucket, job):
                    return
                vectors[start:start + COPY_SLICE] = bucket.copy(job.positions[start:start + COPY_SLICE])
        job.index = build_index(self.dim, job.hnsw, job.ids[:0], vectors[:0])
        # In slices, so that a shutdown or a newer index stops a build that would take a minute.
        for start in range(0, len(job.ids), BUILD_SLICE):
            with self._lock:
                if not self._current(fingerprint, bucket, job):
                    return
            job.index.add_with_ids(vectors[start:start + BUILD_SLICE], job.ids[start:start + BUILD_SLICE])
        del vectors
        job.live = {int(i): j for j, i in enumerate(job.ids)}
        while True:
            with self._lock:
                if not self._current(fingerprint, bucket, job):
                    return
                added = bucket.added_since(job)
                if len(added[0]) <= CATCH_UP:
                    job.extend(*added)
                    bucket.finish_rebuild(job)
                    self._maintain(fingerprint, bucket)
                    return
            job.extend(*added)  # many were stored during the build: add them outside the lock, then look again

    def wait_for_rebuilds(self, timeout: float | None = None) -> bool:
        """Wait (without holding the lock) until no rebuild is queued or running; False on timeout."""
        worker = self._worker
        while worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
            worker = self._worker
        return True

    def stop(self, wait_s: float = 2.0) -> None:
        """Drop queued and running rebuilds (shutdown): the old indexes stay as they are. The
        running one stops at its next slice; the caller must not hold the lock."""
        self._stopped = True
        self._queue.clear()
        self.wait_for_rebuilds(wait_s)

    def save(self, folder: Path) -> int:
        """Write every HNSW index (flat ones rebuild in milliseconds) into `folder`, replacing
        what was there; returns how many were written."""
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        old = folder.with_name(f"{folder.name}.{os.getpid()}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(0o700, parents=True)  # the tenants' contexts and prompt vectors: the owner's only, as the rows are
            manifest = {}
            for fingerprint, bucket in self.buckets.items():
                if bucket.hnsw:
                    name = hashlib.sha256(fingerprint.encode()).hexdigest()[:32] + ".faiss"
                    bucket.save(tmp / name)
                    os.chmod(tmp / name, 0o600)
                    manifest[name] = fingerprint
            (tmp / "manifest.json").write_text(json.dumps(manifest))
            os.chmod(tmp / "manifest.json", 0o600)
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
                if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
                    raise ValueError("the manifest is no map of file names to context fingerprints")
                # Only names of files in the folder: a damaged manifest must not point the loader elsewhere.
                snapshots = {fp: folder / name for name, fp in manifest.items() if Path(name).name == name}
            except (OSError, ValueError) as exc:
                log.warning("cache index snapshot %s is unreadable (%s); rebuilding the indexes", folder, exc)
        reused = 0
        for fingerprint, (ids, vectors) in rows.items():
            bucket = None
            if fingerprint in snapshots and len(ids) >= self.hnsw_from:
                try:
                    bucket = Bucket.from_snapshot(snapshots[fingerprint], self.dim, self.hnsw_from, ids, vectors)
                except Exception as exc:  # noqa: BLE001 - a snapshot only saves time: whatever fails to load is rebuilt
                    # (faiss reports a damaged file as RuntimeError), never a start that fails every time
                    log.warning("cache index snapshot %s is unreadable (%s); rebuilding it", snapshots[fingerprint], exc)
            if bucket is not None:
                self.buckets[fingerprint] = bucket
                self._maintain(fingerprint, bucket)  # many tombstones: compacted in the background
                reused += 1
            else:
                self.add_many(fingerprint, ids, vectors)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return reused

    def __contains__(self, fingerprint: str) -> bool:
        return fingerprint in self.buckets

    def search(self, fingerprint: str, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        b = self.buckets.get(fingerprint)
        return b.search(vector, k) if b is not None else []

    def vector(self, fingerprint: str, entry_id: int) -> np.ndarray:
        return self.buckets[fingerprint].vector(entry_id)

    def clear(self) -> None:
        self.buckets.clear()
        self._queue.clear()
