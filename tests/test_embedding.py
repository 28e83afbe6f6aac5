"""Serving embeddings (ONNX Runtime) against the sentence-transformers reference used in training."""
from __future__ import annotations

import os

import numpy as np
import pytest

from router.embedding import DIM, Embedder, model_dir

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
    vecs = Embedder().encode(TEXTS)
    assert vecs.shape == (len(TEXTS), DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert (vecs * reference).sum(axis=1).min() > 0.999


def test_batch_order_does_not_change_vectors():
    e = Embedder()
    together = e.encode(TEXTS, batch_size=4)
    alone = np.stack([e.encode_one(t) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)

