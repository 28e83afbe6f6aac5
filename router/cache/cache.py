"""The response cache: exact matches first, then verified semantic matches in the same context.

All public methods are thread-safe (one lock): the gateway looks up from worker threads and
stores from post-hooks, possibly at the same time. Entries expire after their TTL (per
route, else the default), the least recently used entry is evicted past `max_entries` or
`max_bytes` (the memory the entries hold, estimated), and with a folder every entry persists
in SQLite across restarts.
"""
from __future__ import annotations

import heapq
import logging
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from router.cache.entry import Entry
from router.cache.keys import RequestKeys
from router.cache.same_question import plain_form, same_words_differ
from router.cache.semantic import SemanticIndex
from router.cache.store import MemoryStore, Store
from router.cache.verifier import LOW_SIMILARITY, Verifier
from router.embedding import DIM

log = logging.getLogger(__name__)

# Measured with bench/bench_cache.py: past this size a one-core flat scan is slower than HNSW.
DEFAULT_HNSW_FROM = 4096
CANDIDATES = 4  # neighbours the verifier looks at; the best verified one wins
# What an entry holds besides its question, answer and vector: the Entry, its keys and numbers,
# its places in the LRU, exact-key, expiry and index maps (sys.getsizeof over a cache filled by
# bench/bench_cache_memory.py's agent traffic).
ENTRY_BYTES = 640
VECTOR_OVERHEAD = 160  # a vector's array header and its place in a Single or a FAISS index


@dataclass(frozen=True)
class Hit:
    kind: str  # "hit" (exact) or "semantic-hit"
    similarity: float  # cosine between the cached and the asked question (1.0 for exact hits)
    probability: float  # the verifier's P(same question); 1.0 for exact hits
    entry: Entry
    response: dict[str, Any]


# Why a lookup missed (`Lookup.reason`), besides the verifier's `LOW_SIMILARITY` and `HARD_RULE`.
EXACT_ONLY = "exact_only"  # no semantic match was tried: semantic matching off, no vector, a question too long for it
NO_CANDIDATE = "no_candidate"  # nothing live in the request's context to compare with
BELOW_THRESHOLD = "below_threshold"  # the verifier read the pair and scored it under its threshold
ENTRY_GONE = "entry_gone"  # the entry found was dropped by another process on the same folder


@dataclass(frozen=True)
class Lookup:
    """A lookup's answer, and why there is none (`ResponseCache.explain`): what cache-eval reports."""

    hit: Hit | None
    reason: str  # "hit", else why not: the reasons above, or the verifier's LOW_SIMILARITY / HARD_RULE
    score: float | None = None  # the verifier's score for the best candidate (1.0 for a hit it never read); None where none reached its model


class ResponseCache:
    def __init__(
        self,
        path: str | Path | None = None,
        *,
        ttl_s: float = 86400.0,
        route_ttl_s: Mapping[str, float] | None = None,
        max_entries: int = 100_000,
        max_bytes: float = float("inf"),
        semantic: bool = True,
        verifier: Verifier | None = None,
        hnsw_from: int = DEFAULT_HNSW_FROM,
        clock: Callable[[], float] = time.time,
        dim: int = DIM,
    ):
        if semantic and verifier is None:
            raise ValueError("a semantic cache needs a verifier (Verifier.load())")
        self.ttl_s = ttl_s
        self.route_ttl_s = dict(route_ttl_s or {})
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.semantic = semantic
        self.verifier = verifier
        self.clock = clock
        self.dim = dim
        self._lock = threading.RLock()
        self._store = Store(path) if path is not None else MemoryStore()
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # LRU order: least recently used first
        self._exact: dict[str, int] = {}
        self._expiry: list[tuple[float, int]] = []
        self._bytes = 0
        self._contexts: dict[str, int] = {}  # live entries per context fingerprint
        self._index = SemanticIndex(dim, hnsw_from, self._lock)
        with self._lock:  # a background index rebuild may start while the rest loads
            self._load()

    def _load(self) -> None:
        by_bucket: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for e in self._store.load(self.clock(), self.dim):
            e.size = self._held(e, 0)
            self._track(e)
            if e.vector is not None:
                ids, vecs = by_bucket.setdefault(e.fingerprint, ([], []))
                ids.append(e.id)
                vecs.append(e.vector)
                e.vector = None  # the index holds it
        reused = self._index.restore(self._snapshot_dir(), {fp: (ids, np.vstack(vecs)) for fp, (ids, vecs) in by_bucket.items()})
        stored = len(self._entries)
        self._evict_over_limit()
        if len(self._entries) < stored:  # a limit lowered since they were stored: said, not done silently
            log.warning("cache: dropped %d of the %d stored entries in %s, the least recently used, to fit cache.max_entries "
                        "(%s) and cache.max_bytes (%s)", stored - len(self._entries), stored, self._store.path,
                        self.max_entries, self.max_bytes)
        if self._entries:
            log.info("cache: loaded %d entries from %s (%d of %d indexes from the shutdown snapshot)",
                     len(self._entries), self._store.path, reused, len(by_bucket))

    def _snapshot_dir(self) -> Path | None:
        return self._store.folder / "index" if self._store.folder is not None else None

    def _held(self, e: Entry, answer_bytes: int) -> int:
        vector = 4 * self.dim + VECTOR_OVERHEAD if e.vector is not None else 0
        return ENTRY_BYTES + sys.getsizeof(e.text) + answer_bytes + vector

    def _track(self, e: Entry) -> None:
        self._bytes += e.size
        self._contexts[e.fingerprint] = self._contexts.get(e.fingerprint, 0) + 1
        self._entries[e.id] = e
        self._exact[e.exact] = e.id
        heapq.heappush(self._expiry, (e.expires, e.id))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes_held(self) -> int:
        """The memory the entries hold, estimated: what `max_bytes` bounds (answers count only
        without a folder; with one they are on disk)."""
        with self._lock:
            return self._bytes

    def ttl_for(self, route: str) -> float:
        return self.route_ttl_s.get(route, self.ttl_s)

    # ---- reads ----

    def may_hit(self, keys: RequestKeys) -> tuple[bool, bool]:
        """(an exact hit is possible, a semantic hit is possible) for a request, never waiting:
        lets the gateway skip the lookup's thread hop, and the embedding, when nothing is cached
        under the request's key or context (an agent's every new turn has a context never seen
        before). While a write holds the lock (it may be halfway through replacing the very
        entry asked for) the answer is "possible", and the real lookup waits for the write."""
        semantic_ok = self.semantic and keys.semantic_ok
        if not self._lock.acquire(blocking=False):
            return True, semantic_ok
        try:
            return keys.exact in self._exact, semantic_ok and keys.fingerprint in self._index
        finally:
            self._lock.release()

    def stores_vector(self, keys: RequestKeys) -> bool:
        """Whether `put` would keep this request's vector now, so a caller embeds only then: the
        first question in a context under way is stored for exact hits only (see `put`). A read
        without the lock: at worst one vector is computed and dropped, or one entry stored
        without one, as if the other request had come a moment later."""
        return self.semantic and keys.semantic_ok and not self._unseen(keys)

    def _unseen(self, keys: RequestKeys) -> bool:
        return bool(keys.history) and not self._contexts.get(keys.fingerprint)

    def lookup(self, keys: RequestKeys, vector: np.ndarray | None = None, *, semantic: bool = True) -> Hit | None:
        """The cached answer for a request, exact first; `vector` is the unit embedding of `keys.text`."""
        return self.explain(keys, vector, semantic=semantic).hit

    def explain(self, keys: RequestKeys, vector: np.ndarray | None = None, *, semantic: bool = True) -> Lookup:
        """`lookup`, with why it missed and the verifier's score: the same decision."""
        with self._lock:
            now = self.clock()
            hit = self._lookup_exact(keys, now)
            if hit is not None:
                return Lookup(hit, "hit", hit.probability)
            if not (semantic and self.semantic and keys.semantic_ok and vector is not None):
                return Lookup(None, EXACT_ONLY)
            return self._lookup_semantic(keys, np.asarray(vector, dtype=np.float32), now)

    def _alive(self, entry_id: int, now: float) -> Entry | None:
        e = self._entries.get(entry_id)
        if e is None:
            return None
        if e.expires <= now:
            self._remove(e)
            return None
        return e

    def _served(self, e: Entry, similarity: float, probability: float) -> Lookup:
        hit = self._answer(e, "semantic-hit", similarity, probability)
        return Lookup(hit, "hit", probability) if hit is not None else Lookup(None, ENTRY_GONE, probability)

    def _answer(self, e: Entry, kind: str, similarity: float, probability: float) -> Hit | None:
        # None where the row is gone or now holds another key (another process on the folder
        # replaced or dropped it): a miss, and the entry this process held is dropped.
        response = self._store.response(e.id, e.exact)
        if response is None:
            self._remove(e)
            return None
        self._entries.move_to_end(e.id)
        return Hit(kind=kind, similarity=similarity, probability=probability, entry=e, response=response)

    def _lookup_exact(self, keys: RequestKeys, now: float) -> Hit | None:
        entry_id = self._exact.get(keys.exact)
        e = self._alive(entry_id, now) if entry_id is not None else None
        return self._answer(e, "hit", 1.0, 1.0) if e is not None else None

    def _lookup_semantic(self, keys: RequestKeys, vector: np.ndarray, now: float) -> Lookup:
        found = self._index.search(keys.fingerprint, vector, CANDIDATES)
        close = [(i, s) for i, s in found if s >= self.verifier.min_cosine]
        live = [(e, s) for e, s in ((self._alive(i, now), s) for i, s in close) if e is not None]
        if not live:
            return Lookup(None, LOW_SIMILARITY if found and not close else NO_CANDIDATE)
        asked = plain_form(keys.text)
        for e, sim in live:
            if plain_form(e.text) == asked and not same_words_differ(e.text, keys.text):
                # The same question but for a final mark, case or a contraction (router/cache/same_question.py):
                # the verifier, trained on pairs that never differ by so little, can doubt them. Not when
                # the difference is in a text handed over to be worked on ("Reverse this text: hello
                # world" / "... world.") or a name's case ("Rust" / "rust"): hard rules refuse those.
                return self._served(e, sim, 1.0)
        cached = np.vstack([self._index.vector(keys.fingerprint, e.id) for e, _ in live])
        judged = self.verifier.judge(
            [e.text for e, _ in live], [keys.text] * len(live), cached, np.repeat(vector[None, :], len(live), axis=0)
        )
        best = judged.best
        if judged.accept[best] < self.verifier.threshold:
            score = float(judged.score[best])
            return Lookup(None, judged.refused[best] or BELOW_THRESHOLD, None if np.isnan(score) else score)
        e, sim = live[best]
        return self._served(e, sim, float(judged.accept[best]))

    # ---- writes ----

    def put(
        self,
        keys: RequestKeys,
        *,
        tenant: str,
        route: str,
        response: Mapping[str, Any],
        model: str,
        cost_usd: float,
        vector: np.ndarray | None = None,
    ) -> Entry:
        """Store an answer (replacing any entry with the same exact key)."""
        with self._lock:
            now = self.clock()
            # A question after earlier turns (a conversation under way, an agent's every turn) is
            # in a context no other request shares until one comes back to it: a retry or a
            # regeneration of the same request, which is an exact hit, or another question at the
            # same point (an edited message). So the first question in a context with no live
            # entry is stored without its vector (1.6 KB); from its second question on, entries
            # there are matched semantically as any others (`stores_vector`).
            keep_vector = vector is not None and self.stores_vector(keys)
            old = self._exact.get(keys.exact)
            if old is not None and old in self._entries:
                self._remove(self._entries[old])
            e = Entry(
                id=0,
                exact=keys.exact,
                fingerprint=keys.fingerprint,
                # Interned: a few distinct names shared by every entry instead of a copy in each.
                tenant=sys.intern(tenant),
                route=sys.intern(route),
                text=keys.text,
                model=sys.intern(model),
                cost_usd=float(cost_usd),
                created=now,
                expires=now + self.ttl_for(route),
                vector=np.asarray(vector, dtype=np.float32).reshape(-1) if keep_vector else None,
            )
            e.id, answer_bytes = self._store.put(e, dict(response))
            e.size = self._held(e, answer_bytes)
            self._track(e)
            if e.vector is not None:
                self._index.add(e.fingerprint, e.id, e.vector)
                e.vector = None
            self._purge_expired(now)
            self._evict_over_limit()
            return e

    def _remove(self, e: Entry) -> None:
        tracked = self._entries.pop(e.id, None)
        if tracked is not None:
            self._bytes -= tracked.size
            left = self._contexts.pop(e.fingerprint) - 1
            if left:
                self._contexts[e.fingerprint] = left
        if self._exact.get(e.exact) == e.id:
            del self._exact[e.exact]
        self._index.remove(e.fingerprint, e.id)
        self._store.delete([(e.id, e.exact)])

    def _purge_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires, entry_id = heapq.heappop(self._expiry)
            e = self._entries.get(entry_id)
            if e is not None and e.expires == expires:
                self._remove(e)

    def _evict_over_limit(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            _, e = next(iter(self._entries.items()))
            self._remove(e)
        if len(self._expiry) > 2 * max(len(self._entries), 1024):
            # Replaced and evicted entries leave stale heap items; compact now and then.
            self._expiry = [(e.expires, e.id) for e in self._entries.values()]
            heapq.heapify(self._expiry)

    def forget(self, entry_id: int, created: float) -> bool:
        """Drop this entry (an answer its users rejected); False if it is gone already (expired,
        evicted, or replaced by a newer answer, which nobody has rejected). `created` tells the
        entry from a later one given the same id (a cache written before ids were AUTOINCREMENT
        handed freed ids out again)."""
        with self._lock:
            e = self._entries.get(entry_id)
            if e is None or e.created != created:
                return False
            self._remove(e)
            return True

    def clear(self) -> None:
        with self._lock:
            self._store.clear()
            self._entries.clear()
            self._bytes = 0
            self._contexts.clear()
            self._exact.clear()
            self._expiry.clear()
            self._index.clear()

    def close(self) -> None:
        # Outside the lock, which the rebuild thread takes to notice it is stopped: a rebuild in
        # flight is dropped, and the snapshot holds the index that served.
        self._index.stop()
        with self._lock:
            folder = self._snapshot_dir()
            if folder is not None:
                try:
                    self._index.save(folder)
                except (RuntimeError, OSError) as exc:  # the next start rebuilds: slower, never wrong
                    log.warning("cache: could not write the index snapshot to %s: %s", folder, exc)
            self._store.close()
