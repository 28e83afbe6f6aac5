"""A dataset column embedded under a progress bar: a cold run of eval, train or cache-eval spends
minutes here (7,598 prompts: 5 min on a 2-core VM), which a bare log line left looking hung."""
from __future__ import annotations

from typing import Sequence

import numpy as np

CHUNK = 512  # texts per step of the bar: each step is a few seconds cold, milliseconds memoised


def encode_with_progress(texts: Sequence[str], desc: str = "embed") -> np.ndarray:
    """`router.embedding.encode_cached(texts)`, a slice at a time (a text's vector does not depend
    on the texts embedded with it: `Embedder.encode`; the memo is per distinct text)."""
    from tqdm import tqdm

    from router.embedding import DIM, encode_cached, whole_list_memoised

    texts = list(texts)
    if whole_list_memoised(texts):  # an earlier release's memo for this very list is read whole
        return encode_cached(texts)
    vecs = np.empty((len(texts), DIM), dtype=np.float32)
    with tqdm(total=len(texts), desc=desc, unit="text") as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start:start + CHUNK]
            vecs[start:start + len(chunk)] = encode_cached(chunk)
            bar.update(len(chunk))
    return vecs
