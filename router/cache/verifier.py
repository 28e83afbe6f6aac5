"""The learned pair verifier: does the cached question's answer serve the new question?

Two stages, trained on Quora Question Pairs. First a LightGBM classifier over
`features.pair_features` (training/train_verifier.py); then, when the artifact holds one, a
MiniLM cross-encoder (router/cache/cross_encoder.py, training/train_cross_encoder.py) on
the best candidates only. The score is the LightGBM probability times the cross-encoder's
sigmoid, so it never exceeds the first stage's probability: a candidate whose LightGBM
probability is below the threshold cannot pass, and the cross-encoder is not run for it
(a lookup with no close neighbour stays as cheap as without the second stage). The threshold
was chosen on a validation split (loosest with precision >= 0.95 over >= 150 accepted pairs).
Pairs with different numbers on both sides, different negation, opposite words, a reversed
direction or swapped roles are refused outright (`features.hard_mismatch`), and pairs below
`min_cosine` never reach the model. The artifact holds the booster, the packed cross-encoder,
the threshold and an IDF table per wordpiece (`idf.npy`, float16); the static word vectors come
from the installed MiniLM package.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from router.cache.cross_encoder import CrossEncoder, onnx_for
from router.cache.features import Lexicon, hard_mismatch, pair_features

MODEL_FILE = "model.txt"
META_FILE = "verifier.json"
IDF_FILE = "idf.npy"
SECOND_STAGE_CANDIDATES = 2  # candidates per lookup the cross-encoder reads (~1.8 ms per pair on one core)


def default_path() -> Path:
    """The verifier shipped in the repository (`models/cache_verifier`)."""
    return Path(__file__).resolve().parent.parent.parent / "models" / "cache_verifier"


def combined_score(first_stage: np.ndarray, cross_encoder_logits: np.ndarray) -> np.ndarray:
    """LightGBM's probability times the cross-encoder's sigmoid: never above the first stage's."""
    return first_stage / (1.0 + np.exp(-cross_encoder_logits))


LOW_SIMILARITY = "low_similarity"  # the cosine is below `min_cosine`
HARD_RULE = "hard_rule"  # `features.hard_mismatch` refuses the pair


@dataclass(frozen=True)
class Judgement:
    """What `Verifier.judge` found per pair. `accept` is what is compared with the threshold to
    decide; `score` is the score that decided it: the combined score where the cross-encoder read
    the pair, else LightGBM's probability (with a second stage, one below the threshold is why
    the pair could not pass, so `accept` holds 0 for it), NaN for a pair `refused` names a reason for.
    A hard rule is named only where it was asked: of the pairs that could pass, and of `best`."""

    accept: np.ndarray
    score: np.ndarray
    refused: list[str | None]
    best: int  # the pair with the highest `accept` (the first of equals): the one served, or reported on a miss; -1 for no pairs


@dataclass
class Verifier:
    booster: Any  # lightgbm.Booster
    threshold: float
    min_cosine: float
    meta: dict[str, Any]
    lexicon: Lexicon
    cross_encoder: CrossEncoder | None = None

    @classmethod
    def load(cls, path: str | Path | None = None, threshold: float | None = None) -> "Verifier":
        import lightgbm as lgb

        folder = Path(path) if path is not None else default_path()
        if not (folder / META_FILE).exists() and path is not None and not folder.is_absolute():
            # A relative path is also looked up in the checkout the package runs from (as the
            # router artifact is): the default `models/cache_verifier` works from any directory.
            in_checkout = default_path().parent.parent / folder
            if (in_checkout / META_FILE).exists():
                folder = in_checkout
        try:
            meta = json.loads((folder / META_FILE).read_text())
            booster = lgb.Booster(model_file=str(folder / MODEL_FILE))
            lexicon = Lexicon(np.load(folder / IDF_FILE))
            cross_encoder = CrossEncoder(onnx_for(folder), word_vectors=lexicon.raw_vectors) if meta.get("second_stage") else None
        except (OSError, ValueError, lgb.basic.LightGBMError) as exc:
            raise ValueError(f"cache verifier at {folder} cannot be loaded: {exc}") from None
        return cls(
            booster=booster,
            threshold=float(threshold if threshold is not None else meta["threshold"]),
            min_cosine=float(meta["min_cosine"]),
            meta=meta,
            lexicon=lexicon,
            cross_encoder=cross_encoder,
        )

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / MODEL_FILE))
        np.save(folder / IDF_FILE, self.lexicon.idf.astype(np.float16))
        meta = {**self.meta, "threshold": self.threshold, "min_cosine": self.min_cosine}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def probability(self, texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """The model's P(duplicate) for each pair, before the hard rules."""
        if len(texts_a) == 0:
            return np.zeros(0)
        X = pair_features(texts_a, texts_b, emb_a, emb_b, self.lexicon)
        return np.asarray(self.booster.predict(X, num_threads=1), dtype=np.float64)

    def first_stage(self, texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """LightGBM's P(duplicate) with the hard rules applied: 0 for refused pairs and low cosine."""
        return self._first_stage(texts_a, texts_b, emb_a, emb_b)[0]

    def _first_stage(self, texts_a, texts_b, emb_a, emb_b, rules_first: bool = True) -> tuple[np.ndarray, list[str | None]]:
        """LightGBM's probabilities, 0 for refused pairs, and why each refused pair was refused.
        `rules_first=False` asks the hard rules only of pairs whose probability reaches the
        threshold: the others cannot pass whatever the rules say, and at 100,000 cached questions,
        whose words are not memoised, the rules cost about 50 µs a pair (a lookup's p50 1.24 →
        1.13 ms on a 2-core VM). Such a pair is not named refused even where a rule would refuse it."""
        emb_a, emb_b = np.asarray(emb_a, dtype=np.float32), np.asarray(emb_b, dtype=np.float32)
        cos = np.einsum("ij,ij->i", emb_a, emb_b)
        # `not >=`: a NaN cosine is refused as low, as it always was, without asking the hard rules.
        refused: list[str | None] = [None if cos[i] >= self.min_cosine else LOW_SIMILARITY for i in range(len(texts_a))]
        if rules_first:
            # The pair features and the booster cost most of a lookup: pairs the rules refuse skip them.
            for i, why in enumerate(refused):
                if why is None and hard_mismatch(texts_a[i], texts_b[i]):
                    refused[i] = HARD_RULE
        scored = [i for i, why in enumerate(refused) if why is None]
        p = np.zeros(len(texts_a))
        if scored:
            p[scored] = self.probability([texts_a[i] for i in scored], [texts_b[i] for i in scored], emb_a[scored], emb_b[scored])
        if not rules_first:
            for i in scored:
                if p[i] >= self.threshold and hard_mismatch(texts_a[i], texts_b[i]):
                    refused[i], p[i] = HARD_RULE, 0.0
        return p, refused

    def accept_probability(self, texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """The verifier's score per pair, compared with `threshold`. With a second stage: LightGBM's
        probability times the cross-encoder's for the best `SECOND_STAGE_CANDIDATES` pairs whose
        first-stage probability reaches the threshold; 0 for the other pairs, which cannot pass
        (and for refused pairs, which never reach the cross-encoder)."""
        return self.judge(texts_a, texts_b, emb_a, emb_b, rules_first=True).accept

    def judge(self, texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray,
              rules_first: bool = False) -> Judgement:
        """`accept_probability`, with what each pair's score was, why a pair was refused unread,
        and which pair is the answer (`best`). Unless `rules_first`, the hard rules are asked only
        of the pairs that could pass and of `best` where it misses, so that a miss is reported with
        its real reason: the same decision and report, while a pair under the threshold that a
        rule would refuse keeps its probability in `accept` instead of 0."""
        p, refused = self._first_stage(texts_a, texts_b, emb_a, emb_b, rules_first=rules_first)
        score = np.where(np.array([why is None for why in refused], dtype=bool), p, np.nan)
        out = p
        if self.cross_encoder is not None:
            out = np.zeros_like(p)
            read = [i for i in np.argsort(-p, kind="stable")[:SECOND_STAGE_CANDIDATES] if p[i] >= self.threshold and p[i] > 0]
            if read:
                logits = self.cross_encoder.logits([texts_a[i] for i in read], [texts_b[i] for i in read])
                out[read] = combined_score(p[read], logits)
                score[read] = out[read]
        if not len(out):
            return Judgement(accept=out, score=score, refused=refused, best=-1)
        best = int(np.argmax(out))
        # A miss's best pair the rules were not asked of (under the threshold): asked now, and where
        # they refuse it the best of the rest is reported, as when the rules came first.
        while not rules_first and refused[best] is None and p[best] < self.threshold \
                and hard_mismatch(texts_a[best], texts_b[best]):
            refused[best], score[best], out[best], p[best] = HARD_RULE, np.nan, 0.0, 0.0
            best = int(np.argmax(out))
        return Judgement(accept=out, score=score, refused=refused, best=best)
