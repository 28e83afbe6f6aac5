"""`cache-eval` says how close each pair came: the cosine, the verifier's score, why it missed,
with a progress bar per stage; `row` and `hit` stay as they were."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from router.cache.cache import ResponseCache
from router.cache.keys import request_keys
from router.cache.verifier import Verifier
from router.embedding import encode_cached
from service.cli import main

PAIRS = [
    ("What is the capital of France?", "What is the capital of France?", "hit"),  # exact
    ("How do I reverse a string in Python?", "What is the way to reverse a Python string?", None),  # read by the verifier
    ("How many calories are in 2 eggs?", "How many calories are in 3 eggs?", "hard_rule"),  # numbers differ
    ("Why is the sky blue?", "How do I bake sourdough bread at home?", "low_similarity"),
    ("What time is it right now?", "What time is it right now?", "not_cacheable"),  # about the moment of asking
    ("What is AI?", "  ", "empty_text"),
]


def test_cache_eval_writes_similarity_score_and_reason(tmp_path, capsys):
    src, out = tmp_path / "pairs.csv", tmp_path / "hits.parquet"
    pd.DataFrame({"text_a": [a for a, _, _ in PAIRS], "text_b": [b for _, b, _ in PAIRS]}).to_csv(src, index=False)
    assert main(["cache-eval", "--pairs", str(src), "--out", str(out)]) == 0
    result = pd.read_parquet(out)
    assert list(result.columns) == ["row", "hit", "similarity", "score", "reason"]
    assert result["row"].tolist() == list(range(len(PAIRS))) and result["hit"].dtype == bool
    assert result["similarity"].dtype == np.float64 and result["score"].dtype == np.float64

    reasons = result["reason"].tolist()
    assert [r for r, (_, _, want) in zip(reasons, PAIRS) if want] == [want for _, _, want in PAIRS if want]
    assert reasons[1] in ("hit", "below_threshold")
    # `hit` and `reason` agree, and the score decided it against the shipped threshold.
    assert result["hit"].tolist() == [r == "hit" for r in reasons]
    threshold = Verifier.load().threshold
    assert (result.loc[1, "score"] >= threshold) == result.loc[1, "hit"]
    assert result.loc[0, "score"] == 1.0
    # No score where the pair never reached the verifier's model.
    assert result.loc[2:, "score"].isna().all()

    emb = encode_cached([PAIRS[3][0], PAIRS[3][1]])
    assert math.isclose(result.loc[3, "similarity"], float(emb[0] @ emb[1]), abs_tol=1e-6)
    assert result.loc[3, "similarity"] < Verifier.load().min_cosine
    assert result.loc[0, "similarity"] > 0.999
    assert math.isnan(result.loc[5, "similarity"])  # an empty text: not looked up, no cosine to report

    captured = capsys.readouterr()
    assert "embed: 100%" in captured.err and "cache: 100%" in captured.err  # tqdm, as `train` shows
    assert "misses by reason:" in captured.out and "hard_rule 1" in captured.out


def test_explain_decides_as_lookup_and_scores_a_miss():
    """The lookup gives the score it compared with the threshold; a stricter threshold turns the
    same pair into a miss `below_threshold` carrying that very score."""
    cached, asked = "How do I reverse a string in Python?", "What is the way to reverse a Python string?"
    emb = encode_cached([cached, asked])
    outcomes = {}
    for threshold in (0.0001, 0.9999):
        cache = ResponseCache(None, verifier=Verifier.load(threshold=threshold))
        keys = request_keys({"model": "auto", "messages": [{"role": "user", "content": cached}]}, "auto", "t")
        cache.put(keys, tenant="t", route="auto", response={"choices": []}, model="m", cost_usd=0.0, vector=emb[0])
        asked_keys = request_keys({"model": "auto", "messages": [{"role": "user", "content": asked}]}, "auto", "t")
        outcome = cache.explain(asked_keys, emb[1])
        assert (outcome.hit is None) == (cache.lookup(asked_keys, emb[1]) is None)
        outcomes[threshold] = outcome
        cache.close()
    loose, strict = outcomes[0.0001], outcomes[0.9999]
    assert loose.reason == "hit" and strict.reason == "below_threshold" and strict.hit is None
    assert 0.0 < strict.score < 0.9999


def test_an_earlier_releases_whole_list_memo_is_read_at_once(tmp_path, monkeypatch):
    from router.embedding import DIM, _list_memo_path
    from training.cache_eval import embed_with_progress

    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(tmp_path))
    df = pd.DataFrame({"text_a": ["alpha question", "beta question"], "text_b": ["gamma question", "alpha question"]})
    texts = sorted(set(df["text_a"]) | set(df["text_b"]))
    saved = np.random.default_rng(0).standard_normal((len(texts), DIM)).astype(np.float32)  # no embedder gives these
    path = _list_memo_path(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, saved)
    emb_a, emb_b = embed_with_progress(df)
    pos = {t: i for i, t in enumerate(texts)}
    assert np.array_equal(emb_a, saved[[pos[t] for t in df["text_a"]]])
    assert np.array_equal(emb_b, saved[[pos[t] for t in df["text_b"]]])


def test_the_rules_are_asked_only_of_pairs_that_could_pass_and_a_miss_is_reported_as_before(monkeypatch):
    """A lookup asks the hard rules only of candidates whose probability reaches the threshold
    (the others cannot pass), and of the candidate it reports on a miss; what it decides and
    reports is what asking every candidate first gives."""
    import dataclasses

    from router.cache import verifier as verifier_module

    asked: list[tuple[str, str]] = []
    rules = verifier_module.hard_mismatch

    def counted(a: str, b: str) -> bool:
        asked.append((a, b))
        return rules(a, b)

    shipped = Verifier.load()
    contexts = [
        ("How many calories are in 2 eggs?", ["How many calories are in 3 eggs?", "How many calories are in two eggs?",
                                             "How many calories does an egg white have?", "How many calories are in 2 eggs and toast?"]),
        ("How do I reverse a string in Python?", ["How do I reverse a list in Python?", "What is the way to reverse a Python string?",
                                                  "How do I not reverse a string in Python?"]),
        ("Is coffee good for you?", ["Is coffee bad for you?", "Is tea good for you?", "Is coffee good for your health?"]),
    ]
    for verifier in (shipped, dataclasses.replace(shipped, cross_encoder=None), dataclasses.replace(shipped, threshold=0.05)):
        for new, cached in contexts:
            ea, eb = encode_cached(cached), np.repeat(encode_cached([new]), len(cached), axis=0)
            first = verifier.first_stage(cached, [new] * len(cached), ea, eb)
            before = verifier.judge(cached, [new] * len(cached), ea, eb, rules_first=True)
            monkeypatch.setattr(verifier_module, "hard_mismatch", counted)
            asked.clear()
            judged = verifier.judge(cached, [new] * len(cached), ea, eb)
            monkeypatch.setattr(verifier_module, "hard_mismatch", rules)
            assert judged.best == before.best
            assert judged.refused[judged.best] == before.refused[before.best]
            assert np.isnan(judged.score[judged.best]) == np.isnan(before.score[before.best])
            assert np.isnan(before.score[before.best]) or judged.score[judged.best] == before.score[before.best]
            assert (judged.accept >= verifier.threshold).tolist() == (before.accept >= verifier.threshold).tolist()
            p = verifier.probability(cached, [new] * len(cached), ea, eb)
            could_pass = {cached[i] for i in range(len(cached)) if p[i] >= verifier.threshold}
            assert {a for a, _ in asked} <= could_pass | {cached[judged.best]} | {cached[i] for i in range(len(cached)) if first[i] == 0}
            if verifier.threshold > 0.5:
                assert len(asked) < len(cached)  # most of these pairs score under the shipped threshold
