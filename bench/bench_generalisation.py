"""Generalisation to unseen tasks: train on some tasks, evaluate on held-out tasks (docs/EVALUATION.md).

The router only ever sees prompts of its training tasks; the held-out tasks' prompts are new in
kind, not just new rows. Splits:

* llmrouter_nim9 (9 NIM-hosted LLMs, 14 tasks): hold out MMLU + GSM8K; and three task groups in
  turn (knowledge multiple choice / maths and code / open QA and generation). No per-call cost is
  recorded: cost = input tokens × input price + 200 output tokens × output price, from the set's
  models.json (the same formula for the router's predictions and the realised cost).
* routerdc_7llm (7 open 7–8B LLMs, no cost): hold out MMLU + GSM8K; and ARC + HumanEval. All models
  are priced alike, so routing is quality only: the router's pick (argmax predicted quality)
  against random routing and the best single model.

Each split trains with `openclaw-router train` into a temporary folder and evaluates with the eval
job's `evaluate_table` (kNN fit on the same training tasks).

With `--online N`, the same router then serves the held-out tasks as a stream of N requests with
the bandit on (`openclaw-router simulate`'s replay, every reward observed, seeds 0-2): what the
learning loop makes of tasks the router was never trained on, against random routing over the
stream's second half.

    python bench/bench_generalisation.py [--json OUT.json] [--online 5000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_routing_quality import DATASETS  # noqa: E402

NIM9 = DATASETS / "llmrouter_nim9" / "llmrouter_nim9_train.parquet"
RDC = DATASETS / "routerdc_7llm" / "routerdc_7llm_train.parquet"
NIM9_SPLITS = {
    "mmlu+gsm8k": ["mmlu", "gsm8k"],
    "knowledge-mc": ["mmlu", "arc_challenge", "openbook_qa", "commonsense_qa", "gpqa"],
    "math+code": ["math", "gsm8k", "agentverse-mgsm", "mbpp", "human_eval"],
    "open-qa+gen": ["natural_qa", "trivia_qa", "commongen", "agentverse-logicgrid"],
}
RDC_SPLITS = {"mmlu+gsm8k": ["mmlu", "gsm8k"], "arc+humaneval": ["arc_easy", "arc_challenge", "humaneval"]}


def train_on(frame, folder: Path, prices: Path, extra: list[str]) -> Path:
    from service.cli import main as cli

    data = folder / "train.parquet"
    frame.to_parquet(data, index=False)
    rc = cli(["train", "--data", str(data), "--out", str(folder / "router"), "--prices", str(prices),
              "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", *extra])
    if rc != 0:
        raise RuntimeError(f"training failed with exit code {rc}")
    return folder / "router"


def online_replay(table, router_path: Path, requests: int, seeds=(0, 1, 2), wtp: float = 1.0) -> list[dict]:
    """Static vs bandit router on a request stream of `table`'s prompts; second-half means."""
    from router.bandit import BanditSettings
    from router.engine import LearnedRouter
    from router.predictor import DEFAULT_THROUGHPUT_TPS, DEFAULT_TTFT_S
    from training import simulate as sim

    router = LearnedRouter.load(router_path)
    runs = []
    for seed in seeds:
        pred, replay, emb, basis = sim.learned_predictions(table, router, 0.5, seed, [])
        stream = sim.build_stream(replay, requests, [], seed, DEFAULT_TTFT_S, DEFAULT_THROUGHPUT_TPS)
        static = sim.static_choices(pred, stream, wtp, 0.0)
        bandit, *_ = sim.bandit_choices(pred, emb, stream, wtp, 0.0, BanditSettings(seed=seed), 1.0, seed, basis)
        half = slice(requests // 2, requests)
        runs.append({"seed": seed, "static": sim.means(stream, static, half)["quality"],
                     "bandit": sim.means(stream, bandit, half)["quality"],
                     "random": sim.random_means(stream, half)["quality"],
                     "by_task": {t: {k: r[k]["quality"] for k in ("static", "bandit", "random")}
                                 for t, r in sim.by_task(list(pred.models), stream, static, bandit, half.start).items()}})
    return runs


def run_split(name, frame, table, emb, held_tasks, prices: Path, extra, online: int = 0) -> dict:
    from router.engine import LearnedRouter
    from training.evaluate import evaluate_table

    task = table.task
    test = np.isin(task, held_tasks)
    if not test.any():
        raise ValueError(f"split {name}: none of {held_tasks} in {sorted(set(task))}")
    tr, te = np.nonzero(~test)[0], np.nonzero(test)[0]
    with tempfile.TemporaryDirectory(prefix="gen-") as tmp:
        router = LearnedRouter.load(train_on(frame.iloc[tr].reset_index(drop=True), Path(tmp), prices, extra))
        ev = evaluate_table(table.subset(te), emb[te], router, knn_train=(table.subset(tr), emb[tr]))
        replays = online_replay(table.subset(te), Path(tmp) / "router", online) if online else None
    s = ev.summary
    m = s["methods"]
    best_router_q = max(p[1] for p in m["router"]["points"])
    out = {
        "split": name, "held_out_tasks": held_tasks, "n_train": int(len(tr)), "n_test": int(len(te)),
        "random_quality": m["random"]["mean_quality"], "random_cost": m["random"]["mean_cost"],
        "best_single": s["best_single_model"],
        "router_quality_at_random_cost": m["router"]["quality_at_random_cost"],
        "knn_quality_at_random_cost": m["knn"]["quality_at_random_cost"],
        "router_best_quality": best_router_q,
        "knn_best_quality": max(p[1] for p in m["knn"]["points"]),
        "aiq": {k: m[k]["aiq"] for k in ("router", "knn", "zero", "random", "oracle")},
    }
    if replays:
        out["online"] = {"requests": online, "wtp": 1.0, "second_half_by_seed": replays}
    print(json.dumps(out), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--only", choices=("llmrouter_nim9", "routerdc_7llm"), help="run one data set's splits")
    ap.add_argument("--train-args", default="", help="extra arguments for `openclaw-router train`")
    ap.add_argument("--online", type=int, default=0, metavar="N",
                    help="also replay the held-out tasks as N requests with the bandit on (seeds 0-2)")
    args = ap.parse_args(argv)
    extra = args.train_args.split()
    results = []
    with tempfile.TemporaryDirectory(prefix="gen-prices-") as tmp:
        if args.only in (None, "llmrouter_nim9"):
            results += nim9_splits(extra, args.online)
        if args.only in (None, "routerdc_7llm"):
            results += routerdc_splits(Path(tmp), extra, args.online)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def nim9_splits(extra: list[str], online: int) -> list[dict]:
    from router.embedding import encode_cached
    from training.data import load_prices, read_frame, wide_to_outcomes

    prices = DATASETS / "llmrouter_nim9" / "models.json"
    frame = read_frame(NIM9)
    table = wide_to_outcomes(frame, NIM9, prices=load_prices(prices))
    emb = encode_cached(table.texts)
    return [{"data": "llmrouter_nim9", **run_split(name, frame, table, emb, held, prices, extra, online)}
            for name, held in NIM9_SPLITS.items()]


def routerdc_splits(tmp: Path, extra: list[str], online: int) -> list[dict]:
    from router.embedding import encode_cached
    from training.data import load_prices, read_frame, wide_to_outcomes

    frame = read_frame(RDC)
    models = [c[len("quality__"):] for c in frame.columns if c.startswith("quality__")]
    prices = tmp / "flat_prices.json"  # no costs recorded: every model priced alike
    prices.write_text(json.dumps({m: {"input_per_1m": 0.2, "output_per_1m": 0.2} for m in models}))
    table = wide_to_outcomes(frame, RDC, prices=load_prices(prices))
    emb = encode_cached(table.texts)
    return [{"data": "routerdc_7llm", **run_split(name, frame, table, emb, held, prices, extra, online)}
            for name, held in RDC_SPLITS.items()]


def _per_seed(runs: list[dict], key: str) -> str:
    return " / ".join(f"{run[key]:.3f}" for run in runs)


def report(results: list[dict]) -> str:
    lines = ["| data | held-out tasks | train / test rows | random | router at random's cost | kNN at random's cost "
             "| router best | best single (model) | AIQ router / kNN / Zero |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        aiq = r["aiq"]
        aiq_s = "n/a (one price)" if aiq["router"] is None else f"{aiq['router']:.3f} / {aiq['knn']:.3f} / {aiq['zero']:.3f}"
        lines.append(f"| {r['data']} | {', '.join(r['held_out_tasks'])} | {r['n_train']} / {r['n_test']} | {r['random_quality']:.3f} | "
                     f"{r['router_quality_at_random_cost']:.3f} | {r['knn_quality_at_random_cost']:.3f} | {r['router_best_quality']:.3f} | "
                     f"{r['best_single']['mean_quality']:.3f} ({r['best_single']['model']}) | {aiq_s} |")
    online = [r for r in results if "online" in r]
    if online:
        lines += ["", "Online, second half of the stream (seeds 0 / 1 / 2): quality of random routing, the static "
                  "router, the bandit router; per held-out task: static / bandit / random (seed 0)", "",
                  "| data | held-out tasks | random | static | bandit | per task (seed 0) |", "|---|---|---|---|---|---|"]
        for r in online:
            runs = r["online"]["second_half_by_seed"]
            tasks = "; ".join(f"{t} {v['static']:.2f} / {v['bandit']:.2f} / {v['random']:.2f}" for t, v in runs[0]["by_task"].items())
            lines.append(f"| {r['data']} | {', '.join(r['held_out_tasks'])} | {_per_seed(runs, 'random')} | {_per_seed(runs, 'static')} | {_per_seed(runs, 'bandit')} | {tasks} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
