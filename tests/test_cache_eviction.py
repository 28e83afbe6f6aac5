"""Removals and index rebuilds in the semantic cache (router/cache/semantic.py): tombstones never
reach a search, a rebuild runs beside lookups instead of in front of them, what is stored or
removed while it runs survives the swap, and a shutdown in the middle of one restarts cleanly.
Real FAISS, SQLite, verifier and embedder; a rebuild is held at a barrier by wrapping the
function that builds the new index, so the tests assert orderings, not timings."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from router.cache import semantic
from router.cache.semantic import SemanticIndex
from tests import test_cache_core as core
from tests.test_cache_core import Clock, body, get, new_cache, put

verifier, embed = core.verifier, core.embed  # the module's fixtures, shared


class Held:
    """Once armed, holds the next background rebuild inside its build step until `release` is set."""

    def __init__(self):
        self.armed = False
        self.started = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def held(monkeypatch):
    gate = Held()
    build = getattr(semantic, "build_index", None)

    def held_build(*args, **kwargs):
        if gate.armed and threading.current_thread() is not threading.main_thread():
            gate.started.set()
            assert gate.release.wait(60)
        return build(*args, **kwargs)

    monkeypatch.setattr(semantic, "build_index", held_build, raising=False)
    yield gate
    gate.release.set()


def unit(rng, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run_in_thread(fn, timeout: float = 30.0):
    """`fn()` run on another thread: fails, instead of hanging, if it does not finish."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except Exception as exc:  # noqa: BLE001 (re-raised on the test's thread)
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def test_tombstones_never_reach_a_search_and_the_nearest_live_entries_are_found():
    rng = np.random.default_rng(1)
    vecs = unit(rng, 1000, 64)
    index = SemanticIndex(64, hnsw_from=200)
    index.add_many("ctx", list(range(1000)), vecs)  # the start-up load: flat at once, HNSW in the background
    assert index.wait_for_rebuilds(60)
    assert index.buckets["ctx"].hnsw
    queries = unit(rng, 8, 64)
    live = set(range(1000))
    # Tombstone the 30 nearest entries of each query (240, under the quarter that rebuilds): every
    # query's true neighbourhood is dead, so a search that let tombstones in would show them.
    for q in queries:
        for i in [int(i) for i in np.argsort(-(vecs @ q)) if int(i) in live][:30]:
            index.remove("ctx", i)
            live.discard(i)
    # An id SQLite hands out again (the newest row was deleted) comes back with another vector.
    reused = max(live)
    index.remove("ctx", reused)
    old_vector, vecs[reused] = vecs[reused].copy(), unit(rng, 1, 64)[0]
    index.add("ctx", reused, vecs[reused])
    alive = np.array(sorted(live))
    agree = 0
    for q in queries:
        found = index.search("ctx", q, 4)
        assert len(found) == 4 and all(i in live for i, _ in found)
        truth = alive[np.argsort(-(vecs[alive] @ q))[:4]]
        assert found[0][0] == truth[0]
        agree += len({i for i, _ in found} & set(truth.tolist()))
    assert agree >= 30  # of 32: HNSW is approximate
    found = index.search("ctx", vecs[reused], 1)
    assert found[0][0] == reused and found[0][1] == pytest.approx(1.0, abs=1e-4)
    assert np.array_equal(index.vector("ctx", reused), vecs[reused])
    # The id's tombstoned vector is not its vector any more: it must not answer for it.
    assert all(i != reused or s < 0.99 for i, s in index.search("ctx", old_vector, 4))


@pytest.mark.parametrize("hnsw", [False, True])
def test_a_few_tombstones_among_the_nearest_are_skipped_and_the_next_live_ones_found(hnsw):
    rng = np.random.default_rng(3)
    vecs = unit(rng, 600, 64)
    bucket = semantic.Bucket(64, hnsw_from=300 if hnsw else 10_000)
    bucket.add_many(list(range(600)), vecs)
    bucket.compact()
    assert bucket.hnsw == hnsw
    queries = unit(rng, 6, 64)
    # The 2 nearest of 3 queries die: 6 tombstones, more than a search asks for beyond its 4.
    for q in queries[:3]:
        for i in np.argsort(-(vecs @ q))[:2]:
            bucket.remove(int(i))
    assert bucket.dead == 6
    alive = np.array(sorted(bucket.live))
    for q in queries:
        found = bucket.search(q, 4)
        truth = alive[np.argsort(-(vecs[alive] @ q))[:4]].tolist()
        assert [i for i, _ in found] == truth
        assert [s for _, s in found] == pytest.approx(sorted((float(vecs[i] @ q) for i in truth), reverse=True), abs=1e-5)


def test_a_tombstone_does_not_double_what_a_graph_search_reads():
    """A cache holds some tombstones nearly always (a replaced or expired answer): one must not
    cost every later search of its context twice the distance computations."""
    import faiss

    rng = np.random.default_rng(4)
    vecs = unit(rng, 3000, 64)
    bucket = semantic.Bucket(64, hnsw_from=1000)
    bucket.add_many(list(range(3000)), vecs)
    bucket.compact()
    queries = vecs[:50] + 0.1 * unit(rng, 50, 64)

    def distances_computed() -> int:
        faiss.cvar.hnsw_stats.reset()
        for q in queries:
            bucket.search(q, 4)
        return faiss.cvar.hnsw_stats.ndis

    clean = distances_computed()
    bucket.remove(2999)
    assert bucket.dead == 1
    assert distances_computed() <= clean * 1.1  # filtering every search (efSearch doubled): ~1.55x


def test_a_lookup_completes_while_a_rebuild_is_held(verifier, embed, held):
    clock = Clock()
    cache = new_cache(verifier, hnsw_from=16, clock=clock)
    questions = [f"What is the population of city number {i} in the atlas?" for i in range(40)]
    entries = [put(cache, embed, body(q), q) for q in questions]
    assert cache._index.wait_for_rebuilds(60)  # the switch to HNSW at 16 entries: not held (main thread waits)
    held.armed = True
    for e in entries[:10]:  # 10 of 40: tombstones reach a quarter, the rebuild starts and is held
        assert cache.forget(e.id, e.created)
    assert held.started.wait(30), "no background rebuild started"
    for e in entries[10:14]:  # removed after the copy
        assert cache.forget(e.id, e.created)

    def lookups():
        return [get(cache, embed, body(q)) for q in (questions[13], questions[20], "How many people live in city number 30 in the atlas?")]

    forgotten, kept, paraphrase = run_in_thread(lookups)
    assert not held.release.is_set() and cache._index.buckets[entries[20].fingerprint].rebuilding
    assert forgotten is None or forgotten.entry.id != entries[13].id
    assert kept is not None and kept.kind == "hit" and kept.entry.id == entries[20].id
    assert paraphrase is not None and paraphrase.kind == "semantic-hit" and paraphrase.entry.id == entries[30].id
    held.release.set()
    assert cache._index.wait_for_rebuilds(60)
    bucket = cache._index.buckets[entries[20].fingerprint]
    # the 4 forgotten after the copy are tombstones in the new index, the 10 before it are gone
    assert not bucket.rebuilding and bucket.dead == 4 and bucket._index.ntotal == 30


def test_what_changes_during_a_rebuild_is_in_the_swapped_index(held):
    rng = np.random.default_rng(2)
    vecs = {i: v for i, v in enumerate(unit(rng, 800, 32))}
    index = SemanticIndex(32, hnsw_from=100)
    with index._lock:
        for i, v in vecs.items():
            index.add("ctx", i, v)
    assert index.wait_for_rebuilds(120)
    held.armed = True
    removed: set[int] = set()
    with index._lock:
        old = index.buckets["ctx"]._index
        for i in range(0, 800, 4):  # a quarter: the rebuild starts, copies the live vectors and is held
            index.remove("ctx", i)
            removed.add(i)
    assert held.started.wait(30), "no background rebuild started"
    with index._lock:
        for i, v in zip(range(1000, 1000 + 2 * semantic.CATCH_UP), unit(rng, 2 * semantic.CATCH_UP, 32)):
            index.add("ctx", i, v)  # more than the swap copies under the lock: caught up before it
            vecs[i] = v
        for i in list(range(1, 200, 4)) + list(range(1000, 1040)):  # copied ones and new ones
            index.remove("ctx", i)
            removed.add(i)
        index.remove("ctx", 799)  # an id handed out again, with another vector, while the copy holds the old one
        vecs[799] = unit(rng, 1, 32)[0]
        index.add("ctx", 799, vecs[799])
        for i in (3, 1001, 999 + 2 * semantic.CATCH_UP):  # searches during the rebuild see the old index, without tombstones
            found = index.search("ctx", vecs[i], 4)
            assert all(j not in removed for j, _ in found)
            assert (found[0][0] == i) == (i not in removed)
    held.release.set()
    assert index.wait_for_rebuilds(60)
    live = {i for i in vecs if i not in removed}
    with index._lock:
        bucket = index.buckets["ctx"]
        assert bucket._index is not old and not bucket.rebuilding
        assert set(bucket.live) == live
        assert bucket._index.ntotal == len(live) + bucket.dead
        misses = 0
        for i in live:
            assert np.array_equal(index.vector("ctx", i), vecs[i])
            found = index.search("ctx", vecs[i], 4)
            assert all(j in live for j, _ in found)
            misses += found[0][0] != i
        assert misses <= len(live) // 100  # HNSW is approximate
        assert all(j != 799 or s > 0.99 for j, s in index.search("ctx", vecs[799], 4))


def test_a_restart_round_trips_tombstones_a_freed_id_and_a_rebuild_cut_short(verifier, embed, held, tmp_path, caplog):
    clock = Clock()
    cache = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock)
    questions = [f"What is the population of city number {i} in the atlas?" for i in range(40)]
    entries = [put(cache, embed, body(q), q) for q in questions]
    assert cache._index.wait_for_rebuilds(60)
    held.armed = True
    # The newest row deleted and a new question stored: its id is never handed out again (AUTOINCREMENT).
    assert cache.forget(entries[-1].id, entries[-1].created)
    other = put(cache, embed, body("Which river flows through the capital?"), "The Thames.")
    assert other.id > entries[-1].id
    for e in entries[:14]:
        assert cache.forget(e.id, e.created)
    assert held.started.wait(30), "no background rebuild started"
    run_in_thread(cache.close)  # does not wait for the held rebuild; writes the index that served
    held.release.set()
    assert cache._index.wait_for_rebuilds(60)
    with caplog.at_level("INFO", logger="router.cache.cache"):
        reopened = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock)
    assert "1 of 1 indexes from the shutdown snapshot" in caplog.text
    assert reopened._index.wait_for_rebuilds(60)
    for q, e in zip(questions, entries):
        hit = get(reopened, embed, body(q))
        if e in entries[:14] or e is entries[-1]:
            assert hit is None or hit.entry.text != q
        else:
            assert hit is not None and hit.kind == "hit" and hit.entry.id == e.id
    fp = entries[0].fingerprint
    found = reopened._index.search(fp, embed(questions[-1]), 4)
    assert all(i != other.id or s < 0.99 for i, s in found)  # the new id answers with its own vector only
    assert get(reopened, embed, body("Which river flows through the capital?")).entry.id == other.id
    reopened.close()


def _full_of_tombstones(index: SemanticIndex, n: int, rng) -> np.ndarray:
    """An HNSW bucket of `n` vectors, then removals up to the quarter that starts a rebuild."""
    vecs = unit(rng, n, 64)
    bucket = index.buckets["ctx"] = semantic.Bucket(index.dim, index.hnsw_from)
    bucket.add_many(list(range(n)), vecs)
    bucket.compact()  # HNSW built on this thread: the builds these tests hold or fail are the background ones
    for i in range(n // 3 + 1):
        index.remove("ctx", i)
    return vecs


def test_a_shutdown_stops_a_running_build_instead_of_letting_it_finish(held, monkeypatch):
    built = []
    build = semantic.build_index

    def recorded(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(semantic, "build_index", recorded)  # wraps the held build: records what it returns
    monkeypatch.setattr(semantic, "BUILD_SLICE", 16)
    index = SemanticIndex(64, hnsw_from=200)
    held.armed = True
    _full_of_tombstones(index, 1200, np.random.default_rng(3))
    assert held.started.wait(30)
    run_in_thread(lambda: index.stop(wait_s=0))
    held.release.set()
    assert index.wait_for_rebuilds(30)
    assert built and built[-1].ntotal == 0  # not one slice inserted after the shutdown


def test_a_failing_rebuild_is_not_retried_at_every_put(monkeypatch):
    attempts = []

    def failing(dim, hnsw, ids, vectors):
        if threading.current_thread() is threading.main_thread():
            return build(dim, hnsw, ids, vectors)
        attempts.append(len(ids))
        raise MemoryError("no room for the new graph")

    build = semantic.build_index
    monkeypatch.setattr(semantic, "build_index", failing)
    index = SemanticIndex(64, hnsw_from=200)
    rng = np.random.default_rng(4)
    _full_of_tombstones(index, 600, rng)
    assert index.wait_for_rebuilds(30) and len(attempts) == 1
    for i, v in enumerate(unit(rng, 100, 64)):  # puts that would each have started another attempt
        index.add("ctx", 10_000 + i, v)
        index.remove("ctx", 400 + i)
    assert index.wait_for_rebuilds(30) and len(attempts) == 1
    assert all(p[0] not in range(201) for p in index.search("ctx", unit(rng, 1, 64)[0], 4))  # the old index serves


def test_a_context_emptied_below_the_hnsw_size_during_a_rebuild_turns_exact_at_once(held):
    index = SemanticIndex(64, hnsw_from=200)
    held.armed = True
    rng = np.random.default_rng(5)
    vecs = _full_of_tombstones(index, 600, rng)
    assert held.started.wait(30)
    for i in range(201, 500):  # down to 100 live entries while the rebuild is held
        index.remove("ctx", i)
    bucket = index.buckets["ctx"]
    assert not bucket.hnsw and not bucket.rebuilding
    live = np.arange(500, 600)
    q = unit(rng, 1, 64)[0]
    assert [e for e, _ in index.search("ctx", q, 4)] == list(live[np.argsort(-(vecs[live] @ q))[:4]])
    held.release.set()
    assert index.wait_for_rebuilds(30)
    assert index.buckets["ctx"] is bucket and not bucket.hnsw  # the stale job did not swap its graph in


def test_a_start_without_a_snapshot_serves_from_a_flat_index_while_the_graph_builds(verifier, embed, held, tmp_path):
    clock = Clock()
    cache = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock)
    questions = [f"What is the population of city number {i} in the atlas?" for i in range(40)]
    entries = [put(cache, embed, body(q), q) for q in questions]
    assert cache._index.wait_for_rebuilds(60)
    cache._index.stop()  # a crash: the process ends without close(), so no snapshot is written
    held.armed = True
    reopened = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock)  # returns with the build held
    assert held.started.wait(30), "the switch to HNSW was not started in the background"
    bucket = reopened._index.buckets[entries[0].fingerprint]
    assert not bucket.hnsw and bucket.rebuilding
    hit = run_in_thread(lambda: get(reopened, embed, body("How many people live in city number 30 in the atlas?")))
    assert hit is not None and hit.kind == "semantic-hit" and hit.entry.id == entries[30].id
    held.release.set()
    assert reopened._index.wait_for_rebuilds(60)
    assert reopened._index.buckets[entries[0].fingerprint].hnsw
    assert get(reopened, embed, body(questions[7])).entry.id == entries[7].id
    reopened.close()
