"""ONNX embeddings (fp32 and int8) against sentence-transformers, and training/serving parity."""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from router.embedding import (
    DIM,
    VARIANTS,
    Embedder,
    encode_cached,
    model_dir,
    onnx_path,
    shared_embedder,
    variant,
)
from router.engine import LearnedRouter, default_artifact
from router.types import RoutingRequest

TEXTS = [
    "What is the capital of France?",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Solve for x: 3x + 7 = 22. Show your steps.",
    "Which of these is a mammal?\nA) shark\nB) dolphin\nC) trout\nD) octopus",
    "Summarise the following meeting notes in three bullet points. " * 20,
    "这是一个关于机器学习的问题：什么是过拟合？",
    "Wie spät ist es in Tokio, wenn es in Berlin 9 Uhr ist?",
    "",
    "hi",
    "The committee reviewed the quarterly report on water usage. " * 80,  # past the 256-token limit
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir()), device="cpu")
    return st.encode([t or " " for t in TEXTS], normalize_embeddings=True, convert_to_numpy=True)


def test_fp32_onnx_matches_sentence_transformers(reference):
    vecs = Embedder(which="fp32").encode(TEXTS)
    assert vecs.shape == (len(TEXTS), DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert (vecs * reference).sum(axis=1).min() > 0.999


def test_int8_stays_close_to_sentence_transformers(reference):
    # Measured on these texts: mean 0.990, min 0.980 (the empty, one-word and Chinese texts are
    # the worst). The bars leave room for int8 kernel changes between onnxruntime releases and
    # still catch per-tensor scales, which cost ~4x the cosine error.
    vecs = Embedder(which="int8").encode(TEXTS)
    assert vecs.shape == (len(TEXTS), DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    cos = (vecs * reference).sum(axis=1)
    assert cos.mean() >= 0.985 and cos.min() >= 0.97, cos


@pytest.mark.parametrize("which", VARIANTS)
def test_batch_order_does_not_change_vectors(which):
    e = Embedder(which=which)
    together = e.encode(TEXTS, batch_size=4)
    alone = np.stack([e.encode_one(t) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty embedding memo that reuses this machine's ONNX exports."""
    shared_embedder()  # exports the ONNX files into the real cache if this machine lacks them
    cache = tmp_path / "cache"
    cache.mkdir()
    for which in {"fp32", variant()}:
        (cache / onnx_path(which).name).symlink_to(onnx_path(which))
    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def embedded(monkeypatch) -> list[str]:
    """Every text the real embedder is asked to embed, in order."""
    seen: list[str] = []
    encode = Embedder.encode

    def counting(self, texts, batch_size=32):
        seen.extend(texts)
        return encode(self, texts, batch_size)

    monkeypatch.setattr(Embedder, "encode", counting)
    return seen


def test_training_and_serving_paths_give_identical_vectors(fresh_cache):
    """`encode_cached` (training, eval) and the router's own embedding (serving) agree exactly."""
    computed = encode_cached(TEXTS)
    from_disk = encode_cached(TEXTS)
    router = LearnedRouter.load(default_artifact())
    served = router.featurize([RoutingRequest(text=t) for t in TEXTS])[:, :DIM]
    one_by_one = np.stack([shared_embedder().encode_one(t) for t in TEXTS])
    assert shared_embedder().variant == variant()
    np.testing.assert_array_equal(computed, from_disk)
    np.testing.assert_array_equal(computed, served)
    np.testing.assert_array_equal(computed, one_by_one)


def test_encode_cached_embeds_each_distinct_text_once(fresh_cache, embedded):
    texts = [TEXTS[i] for i in (0, 1, 0, 2, 1, 0, 7, 7)]
    vecs = encode_cached(texts)
    assert sorted(embedded) == sorted({TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[7]})
    np.testing.assert_array_equal(vecs, np.stack([shared_embedder().encode_one(t) for t in texts]))


def test_a_grown_table_embeds_only_its_new_rows(fresh_cache, embedded):
    first = encode_cached(TEXTS[:6])
    embedded.clear()
    grown = encode_cached(TEXTS[:6] + [TEXTS[8]])
    assert embedded == [TEXTS[8]]
    np.testing.assert_array_equal(grown[:6], first)
    np.testing.assert_array_equal(grown[6], shared_embedder().encode_one(TEXTS[8]))


def test_a_memo_that_cannot_be_written_costs_embedding_again_never_the_job(fresh_cache, embedded, monkeypatch):
    import sqlite3

    import router.embedding as embedding

    first = encode_cached(TEXTS[:3])
    embedded.clear()
    connect = sqlite3.connect

    def read_only_folder(target, *args, uri=False, **kwargs):
        # What a read-only or full folder does to a WAL database: only an immutable reader opens.
        if not uri:
            raise sqlite3.OperationalError("unable to open database file")
        return connect(target, *args, uri=uri, **kwargs)

    monkeypatch.setattr(embedding.sqlite3, "connect", read_only_folder)
    np.testing.assert_array_equal(encode_cached(TEXTS[:3]), first)
    assert embedded == []  # read from the memo all the same
    grown = encode_cached(TEXTS[:4])  # a new text: embedded, returned, not memoised
    assert embedded == [TEXTS[3]]
    np.testing.assert_array_equal(grown[3], shared_embedder().encode_one(TEXTS[3]))
    (fresh_cache / "embeddings" / "texts.sqlite").unlink()
    np.testing.assert_array_equal(encode_cached(TEXTS[:3]), first)  # no memo at all: embedded again


def test_a_whole_list_memo_of_an_earlier_release_is_still_read(fresh_cache, embedded):
    from router.embedding import _list_memo_path

    path = _list_memo_path(TEXTS[:3])
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = np.random.default_rng(0).random((3, DIM)).astype(np.float32)
    np.save(path, stored)
    np.testing.assert_array_equal(encode_cached(TEXTS[:3]), stored)
    assert embedded == []


def test_artifact_of_another_variant_warns(tmp_path, monkeypatch, caplog):
    shutil.copytree(default_artifact(), tmp_path / "router")
    manifest = json.loads((tmp_path / "router" / "manifest.json").read_text())
    trained = manifest["features"]["embedding"].get("variant", "fp32")
    other = next(v for v in VARIANTS if v != trained)
    monkeypatch.setenv("OPENCLAW_EMBEDDING_VARIANT", other)
    with caplog.at_level(logging.WARNING, logger="router.engine"):
        LearnedRouter.load(tmp_path / "router")
    assert f"trained on {trained} embeddings, this process serves {other}" in caplog.text
    caplog.clear()
    monkeypatch.setenv("OPENCLAW_EMBEDDING_VARIANT", trained)
    with caplog.at_level(logging.WARNING, logger="router.engine"):
        LearnedRouter.load(tmp_path / "router")
    assert "embeddings, this process serves" not in caplog.text


def test_unknown_variant_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OPENCLAW_EMBEDDING_VARIANT", "fp16")
    with pytest.raises(ValueError, match="OPENCLAW_EMBEDDING_VARIANT='fp16'"):
        variant()


def test_a_huge_text_embeds_as_its_head():
    # Only the first 256 wordpieces count; the embedder reads no more than a head of the text.
    from router.embedding import MAX_CHARS, embed_request_text, shared_embedder

    head = "Explain how a hash map resizes when it grows, step by step. " * 60
    huge = head + "filler " * 200_000
    assert len(huge) > 50 * MAX_CHARS
    assert np.array_equal(shared_embedder().encode_one(huge), shared_embedder().encode_one(head))
    assert np.array_equal(embed_request_text(huge), shared_embedder().encode_one(head))


def test_two_processes_building_the_int8_graph_at_once_both_get_it(tmp_path):
    # Two jobs started together on a fresh machine: onnxruntime's quantizer writes and deletes a
    # file of a fixed name beside the fp32 graph, so without a lock across processes one of them
    # lost it (FileNotFoundError) and the job failed.
    import subprocess
    import sys

    fp32 = onnx_path()
    if not fp32.exists():
        Embedder(which="fp32")
    fresh = tmp_path / "cache"
    fresh.mkdir()
    shutil.copy(fp32, fresh / fp32.name)  # only the quantisation runs, twice at once
    env = {**os.environ, "OPENCLAW_CACHE_DIR": str(fresh)}
    children = [subprocess.Popen([sys.executable, "-m", "router.onnx_export", "embedder", "--variant", "int8"],
                                 env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(c.wait(timeout=300), c.stderr.read()) for c in children]
    assert [rc for rc, _ in results] == [0, 0, 0], [err[-500:] for _, err in results]
    assert (fresh / onnx_path("int8").name).exists()
