"""The verifier's second stage (router/cache/cross_encoder.py): the shipped int8 cross-encoder,
where the verifier runs it, the export path against torch, and a broken artifact.
Real ONNX Runtime, the real shipped artifact and the real MiniLM embedder."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from router.cache.cross_encoder import DELTA_FILE, CrossEncoder, onnx_for, pair_tokenizer
from router.cache.verifier import SECOND_STAGE_CANDIDATES, Verifier, default_path
from router.embedding import shared_embedder

CACHED = ["How do I learn Python quickly?", "What is the capital of France?", "How can I lose weight fast?",
          "How do I become a good programmer?"]
SAME = ["What is the fastest way to learn Python?", "Which city is the capital of France?",
        "What is the fastest way to lose weight?", "How can I become a better programmer?"]
OTHER = ["How do I learn Java quickly?", "What is the population of France?", "How can I gain weight fast?",
         "How do I become a good doctor?"]


@pytest.fixture(scope="module")
def verifier():
    return Verifier.load()


def embed(texts: list[str]) -> np.ndarray:
    return shared_embedder().encode(texts)


def test_shipped_verifier_loads_its_cross_encoder(verifier):
    assert verifier.cross_encoder is not None
    assert verifier.meta["second_stage"]["model"] == DELTA_FILE


def test_a_paraphrase_scores_above_a_near_miss(verifier):
    same = verifier.cross_encoder.logits(CACHED, SAME)
    other = verifier.cross_encoder.logits(CACHED, OTHER)
    assert (same > other).all(), (same, other)


def test_a_pair_scores_the_same_alone_and_beside_others(verifier):
    together = verifier.cross_encoder.logits(CACHED, SAME)
    alone = [verifier.cross_encoder.logits([a], [b])[0] for a, b in zip(CACHED, SAME)]
    assert together.tolist() == alone


def test_second_stage_reads_only_the_best_candidates_past_the_threshold(verifier, monkeypatch):
    new = "What is the fastest way to lose weight?"
    cached = CACHED
    ea, eb = embed(cached), np.repeat(embed([new]), len(cached), axis=0)
    read: list[tuple[str, str]] = []
    logits = verifier.cross_encoder.logits

    def counted(a, b):
        read.extend(zip(a, b))
        return logits(a, b)

    monkeypatch.setattr(verifier.cross_encoder, "logits", counted)
    first = verifier.first_stage(cached, [new] * len(cached), ea, eb)
    score = verifier.accept_probability(cached, [new] * len(cached), ea, eb)
    assert read, "the paraphrase should reach the second stage"
    assert all(first[cached.index(a)] >= verifier.threshold for a, _ in read)
    assert (score <= first).all() and (score[first < verifier.threshold] == 0).all()
    i = cached.index(read[0][0])
    assert score[i] == pytest.approx(first[i] / (1 + np.exp(-logits([cached[i]], [new])[0])))

    # with every candidate past the threshold, still only the best SECOND_STAGE_CANDIDATES are read
    read.clear()
    loose = dataclasses.replace(verifier, threshold=0.0)
    score = loose.accept_probability(cached, [new] * len(cached), ea, eb)
    assert len(read) == min(SECOND_STAGE_CANDIDATES, int((first > 0).sum()))
    assert int((score > 0).sum()) <= SECOND_STAGE_CANDIDATES


def test_a_broken_cross_encoder_is_a_clear_error(tmp_path):
    folder = tmp_path / "verifier"
    shutil.copytree(default_path(), folder)
    (folder / DELTA_FILE).write_bytes(b"this is not an artifact")
    with pytest.raises(ValueError, match="cross-encoder .* cannot be loaded"):
        Verifier.load(folder)
    (folder / DELTA_FILE).unlink()
    with pytest.raises(ValueError, match="cannot be loaded"):
        Verifier.load(folder)
    with pytest.raises(ValueError, match="cannot be loaded"):  # a mistyped path is not the shipped verifier
        Verifier.load("models/cache_verfier")


def test_export_matches_torch(tmp_path):
    """The training export path: fp16 weights -> packed difference from the package's weights ->
    the int8 ONNX rebuilt from it, fed by the numpy word-embedding lookup, against the training model."""
    import torch  # a declared dependency, as are transformers and onnx: never skipped
    from router.embedding import model_dir
    from training.train_cross_encoder import PairClassifier, _save_weights, export

    torch.manual_seed(0)
    model = PairClassifier.build(model_dir(), attn="eager").eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.3)  # a head that spreads the logits, as a trained one does
    _save_weights(model, tmp_path)
    onnx = CrossEncoder(onnx_for(export(tmp_path, tmp_path / "out").parent))
    # the reference sees the same fp16-rounded weights the export read
    for name, p in model.named_parameters():
        if "word_embeddings" not in name:
            p.data = p.data.half().float()
    tok = pair_tokenizer()
    with torch.no_grad():
        ref = []
        for a, b in zip(CACHED + CACHED, SAME + OTHER):
            enc = tok.encode(a, b)
            ids = torch.tensor([enc.ids])
            ref.append(float(model(model.embed(ids), torch.ones_like(ids), torch.tensor([enc.type_ids]))[0]))
    got = onnx.logits(CACHED + CACHED, SAME + OTHER)
    ref = np.array(ref)
    spread = ref.max() - ref.min()
    assert spread > 0.5
    assert np.abs(got - ref).max() < 0.1 * spread, (got, ref)  # int8 weights: close, not equal
    assert np.corrcoef(got, ref)[0, 1] > 0.99
