"""What a cache finds on disk at start and cannot use as it is: a snapshot manifest damaged by
hand (a rebuild, never a start that fails every time) and a size limit lowered since its entries
were stored (said, not done silently)."""
from __future__ import annotations

import stat

import pytest

from tests.test_cache_core import Clock, _fill_hnsw, _hits, body, embed, get, new_cache, put, verifier  # noqa: F401 (fixtures)


@pytest.mark.parametrize("manifest", ['{"a.faiss": [1]}', '{"a.faiss": {"x": 1}}', "[1, 2]", '{"../../etc/passwd": "fp"}'])
def test_a_damaged_snapshot_manifest_means_a_rebuild_not_a_failed_start(verifier, embed, tmp_path, caplog, manifest):  # noqa: F811
    # A list where a fingerprint goes had been a TypeError at every start: a crash loop.
    clock = Clock()
    cache, questions = _fill_hnsw(verifier, embed, tmp_path, clock)
    cache.close()
    assert stat.S_IMODE((tmp_path / "index").stat().st_mode) == 0o700  # the tenants' contexts and prompt vectors
    assert {stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "index").iterdir()} == {0o600}
    (tmp_path / "index" / "manifest.json").write_text(manifest)
    with caplog.at_level("INFO"):
        reopened = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock, ttl_s=100.0)
    assert "0 of 1 indexes from the shutdown snapshot" in caplog.text
    assert all(h is not None and h[0] == "hit" for h in _hits(reopened, embed, questions))


def test_a_lowered_size_limit_says_what_it_dropped_at_start(verifier, embed, tmp_path, caplog):  # noqa: F811
    cache = new_cache(verifier, tmp_path)
    for q in ("What is the capital of France?", "Who wrote Hamlet?", "How far is the Moon?"):
        put(cache, embed, body(q), "an answer")
    cache.close()
    with caplog.at_level("WARNING"):
        reopened = new_cache(verifier, tmp_path, max_entries=1)
    assert len(reopened) == 1 and get(reopened, embed, body("How far is the Moon?")) is not None  # the latest kept
    assert "dropped 2 of the 3 stored entries" in caplog.text and "cache.max_entries (1)" in caplog.text
