"""The learned pair verifier: does the cached question's answer serve the new question?

A LightGBM classifier over `features.pair_features`, trained on Quora Question Pairs by
`training/train_verifier.py`; its threshold was chosen on a validation split for
precision >= 0.95 with a margin. Pairs with different numbers on both sides or different
negation are refused outright, whatever the model says, and pairs below `min_cosine` never
reach it. The artifact holds the booster, the threshold and an IDF table per wordpiece
(`idf.npy`, float16); the static word vectors come from the installed MiniLM package.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from router.cache.features import Lexicon, hard_mismatch, pair_features

MODEL_FILE = "model.txt"
META_FILE = "verifier.json"
IDF_FILE = "idf.npy"


def default_path() -> Path:
    """The verifier shipped in the repository (`models/cache_verifier`)."""
    return Path(__file__).resolve().parent.parent.parent / "models" / "cache_verifier"


@dataclass
class Verifier:
    booster: Any  # lightgbm.Booster
    threshold: float
    min_cosine: float
    meta: dict[str, Any]
    lexicon: Lexicon

    @classmethod
    def load(cls, path: str | Path | None = None, threshold: float | None = None) -> "Verifier":
        import lightgbm as lgb

        folder = Path(path) if path is not None else default_path()
        if not (folder / META_FILE).exists() and path is not None and (default_path() / META_FILE).exists():
            folder = default_path()  # a relative config path that names the shipped artifact
        try:
            meta = json.loads((folder / META_FILE).read_text())
            booster = lgb.Booster(model_file=str(folder / MODEL_FILE))
            lexicon = Lexicon(np.load(folder / IDF_FILE))
        except (OSError, ValueError, lgb.basic.LightGBMError) as exc:
            raise ValueError(f"cache verifier at {folder} cannot be loaded: {exc}") from None
        return cls(
            booster=booster,
            threshold=float(threshold if threshold is not None else meta["threshold"]),
            min_cosine=float(meta["min_cosine"]),
            meta=meta,
            lexicon=lexicon,
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

    def accept_probability(self, texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        """P(duplicate) with the hard rules applied: 0 for number or negation mismatches and low cosine."""
        p = self.probability(texts_a, texts_b, emb_a, emb_b)
        cos = np.einsum("ij,ij->i", np.asarray(emb_a, dtype=np.float32), np.asarray(emb_b, dtype=np.float32))
        refused = np.array([hard_mismatch(a, b) for a, b in zip(texts_a, texts_b)], dtype=bool)
        return np.where(refused | (cos < self.min_cosine), 0.0, p)

    def accept(self, texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
        return self.accept_probability(texts_a, texts_b, emb_a, emb_b) >= self.threshold
