"""Prompt-cache-aware routing on OpenClaw-shaped agent sessions (docs/BENCHMARKS.md).

The catalog is the one the gateway builds from provider keys (`service.presets`, all four
providers enabled with fake keys), routed by the shipped `models/default` under its `auto`
profile (`--profile` picks another). S sessions of T turns each replay what OpenClaw sends: the 40 KB system prompt and 12
function tools of bench/bench_gateway.py, then the whole history (user turns drawn from
RouterBench's `query` column, a ~300-token answer after each, and on every other turn a tool call
with a 2-6 KB tool result before the next user turn). Each turn is viewed with
`view_chat_request`, predicted once, and decided twice with `router.policy.decide`:

  list   the behaviour before the prompt-cache commits: `warm_tokens` always empty;
  cache  `warm_tokens` from the gateway's own `PromptCacheHook` (its `with_warm_tokens` before
         the decision, its `finished` after), on a simulated clock.

Both worlds keep their own hook, fed with the models they chose, and are billed the same way:
`Price.usage_cost` with `cached_tokens` = what the hook says the chosen model holds of the prompt
(read at `cached_input_per_1m`) and, for a model with a write price (Anthropic), the rest of what
the request leaves in the cache as `cache_write_tokens`. Quality is RouterBench's
`quality__<router_model>` label of the chosen model's proxy for that turn's prompt.

Assumptions (the gateway's cache model, which both worlds are scored with; this measures the value
of pricing caching in under that model, not how well the model matches the providers' bills):
a provider holds a prompt for 5 minutes after serving it (`PROMPT_TTL_S`; DeepSeek's disk cache and
OpenAI's extended retention keep it longer, which this does not credit); it keeps the system
prompt and tools from the first turn and the whole prompt once the conversation has an assistant
turn; the cache is per model and per tenant (one tenant here, so sessions share the system
prompt's cache); token counts are the gateway's chars/4 estimate; every answer is 300 tokens
whichever model writes it, so both worlds replay the same history; answers take no time.
Sessions start at random in the first hour, 30-90 s apart between turns, and 20 % of them
pause 10 minutes once, so their cache goes cold.

    python bench/bench_prompt_cache.py [--sessions 100] [--turns 20] [--seed 0] [--profile auto]
        [--out bench/results/prompt_cache.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_gateway import AGENT_SYSTEM, AGENT_TOOLS  # noqa: E402  (the gateway bench's OpenClaw turn)

DATASETS = Path(os.environ.get("OPENCLAW_DATASETS", ROOT.parent / "shared" / "datasets"))
DATA = DATASETS / "routerbench_subset" / "routerbench_subset_train.parquet"
KEYS = {"OPENAI_API_KEY": "sk-bench", "ANTHROPIC_API_KEY": "sk-ant-bench", "GEMINI_API_KEY": "bench",
        "DEEPSEEK_API_KEY": "sk-bench"}
TENANT = "bench"
ANSWER_TOKENS = 300
ANSWER = "Here is what I found in the workspace and what I changed. " * 20  # ~1,200 chars: 300 tokens
PAUSE_SHARE, PAUSE_S = 0.2, 600.0
WORLDS = ("list", "cache")


def sessions(n: int, turns: int, rows: int, rng: np.random.Generator) -> list[list[tuple[float, int]]]:
    """Per session, (clock time, RouterBench row) of each turn."""
    out = []
    for _ in range(n):
        gaps = rng.uniform(30.0, 90.0, size=turns)
        gaps[0] = rng.uniform(0.0, 3600.0)
        if rng.random() < PAUSE_SHARE:
            gaps[rng.integers(1, turns)] += PAUSE_S
        out.append(list(zip(np.cumsum(gaps).tolist(), rng.integers(rows, size=turns).tolist())))
    return out


def bodies(script: list[tuple[float, int]], queries: list[str], rng: np.random.Generator, s: int) -> list[dict]:
    """The chat bodies OpenClaw sends on each turn of one session: the history replayed, the new
    user turn last."""
    messages: list[dict] = [{"role": "system", "content": AGENT_SYSTEM}]
    out = []
    for t, (_, row) in enumerate(script):
        messages.append({"role": "user", "content": queries[row]})
        out.append({"model": "auto", "messages": list(messages), "tools": AGENT_TOOLS, "stream": True,
                    "stream_options": {"include_usage": True}, "max_completion_tokens": 1024})
        answer: dict = {"role": "assistant", "content": f"[{s}.{t}] {ANSWER}"}
        if t % 2 == 0:
            call = f"call_{s}_{t}"
            answer["tool_calls"] = [{"id": call, "type": "function", "function": {
                "name": f"tool_{t % 12}", "arguments": json.dumps({"path": f"src/file_{s}_{t}.py", "limit": 200})}}]
            messages += [answer, {"role": "tool", "tool_call_id": call,
                                  "content": f"file_{s}_{t}.py:\n" + "x = compute(x) + 1  # step\n" * int(rng.integers(75, 230))}]
        else:
            messages.append(answer)
    return out


def bill(spec, request, held: int) -> tuple[float, int]:
    """What the provider bills the turn under the cache model, and the tokens it read from its cache."""
    min_cached = spec.price.cache_min_tokens
    held = min(held, request.input_tokens) if held >= min_cached else 0
    cacheable = request.cacheable_tokens if request.cacheable_tokens >= min_cached else 0
    written = max(cacheable - held, 0) if spec.price.cache_write_per_1m is not None else 0
    usage = {"prompt_tokens": request.input_tokens, "completion_tokens": ANSWER_TOKENS,
             "prompt_tokens_details": {"cached_tokens": held, "cache_write_tokens": written}}
    return spec.price.usage_cost(usage), held


def summarise(turns: list[dict], catalog_names: list[str], n_sessions: int, wtp: float) -> dict:
    cost = np.array([t["cost"] for t in turns])
    predicted = np.array([t["predicted"] for t in turns])
    at_list = np.array([t["list_cost"] for t in turns])
    by_session: dict[int, list[str]] = {}
    for t in turns:
        by_session.setdefault(t["session"], []).append(t["model"])
    switches = [sum(a != b for a, b in zip(ms, ms[1:])) for ms in by_session.values()]
    shares = Counter(t["model"] for t in turns)
    return {
        "turns": len(turns),
        "cost_per_turn_usd": float(cost.mean()),
        "predicted_cost_per_turn_usd": float(predicted.mean()),
        "list_price_cost_per_turn_usd": float(at_list.mean()),
        "realised_over_predicted": float(cost.sum() / predicted.sum()),
        "input_cost_per_turn_usd": float(np.mean([t["input_cost"] for t in turns])),
        "predicted_input_cost_per_turn_usd": float(np.mean([t["predicted_input"] for t in turns])),
        "input_realised_over_predicted": float(sum(t["input_cost"] for t in turns) / sum(t["predicted_input"] for t in turns)),
        "cost_per_session_usd": float(cost.sum() / n_sessions),
        "quality": float(np.mean([t["quality"] for t in turns])),
        # the policy's own objective, realised: quality minus what the client says its cost is worth
        "utility": float(np.mean([t["quality"] for t in turns]) - cost.mean() / wtp),
        "predicted_p_good": float(np.mean([t["p_good"] for t in turns])),
        "switches_per_session": float(np.mean(switches)),
        "input_tokens_read_from_cache": float(sum(t["held"] for t in turns) / sum(t["input_tokens"] for t in turns)),
        "share": {m: shares[m] / len(turns) for m in catalog_names if shares[m]},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "prompt_cache.json"))
    args = ap.parse_args(argv)

    import pandas as pd

    import service.session_memory as session_memory
    from router.embedding import encode_cached
    from router.engine import LearnedRouter, find_artifact
    from router.policy import decide
    from router.request_view import view_chat_request
    from service.hooks.prompt_cache_hook import PromptCacheHook
    from service.pipeline import RequestContext
    from service.presets import build_preset_config

    started = time.perf_counter()
    config = build_preset_config(KEYS)
    catalog = list(config.models)
    specs = {s.name: s for s in catalog}
    profile = config.router.profiles[args.profile]
    router = LearnedRouter.load(find_artifact(config.router.artifact, config))
    frame = pd.read_parquet(args.data)
    queries = frame["query"].astype(str).tolist()
    emb = encode_cached(queries)

    rng = np.random.default_rng(args.seed)
    scripts = sessions(args.sessions, args.turns, len(queries), rng)
    events = []  # (time, session, turn, row, body)
    for s, script in enumerate(scripts):
        for t, ((at, row), body) in enumerate(zip(script, bodies(script, queries, rng, s))):
            events.append((at, s, t, row, body))
    events.sort(key=lambda e: e[0])
    requests = [view_chat_request(e[4]) for e in events]
    # Both worlds replay the same history, so one prediction per turn serves both decisions.
    pred = router.predict(requests, emb[[e[3] for e in events]], catalog)
    built_s = time.perf_counter() - started

    # The hook's memory reads the wall clock; the sessions run on the simulated one instead.
    clock = SimpleNamespace(now=0.0)
    session_memory.time = SimpleNamespace(time=lambda: clock.now, monotonic=lambda: clock.now)
    hooks = {w: PromptCacheHook() for w in WORLDS}
    turns: dict[str, list[dict]] = {w: [] for w in WORLDS}

    async def replay() -> None:
        for i, ((at, s, t, row, body), request) in enumerate(zip(events, requests)):
            clock.now = at
            for world, hook in hooks.items():
                warm, chain = await hook.with_warm_tokens(TENANT, request, body)
                decision = decide(pred, warm if world == "cache" else request, catalog=catalog, profile=profile, row=i)
                chosen, spec = decision.candidates[0], specs[decision.model]
                hook.finished(RequestContext(
                    request_id=f"{world}-{i}", body=body, routing=warm, headers={}, stream=True, profile=args.profile,
                    tenant=TENANT, answered_by=spec.name, status="ok", attempts=[{"model": spec.name, "status": "ok"}],
                    extras={"prompt_chain": chain}))
                cost, held = bill(spec, request, warm.warm_tokens.get(spec.name, 0))
                turns[world].append({
                    "session": s, "turn": t, "model": spec.name, "cost": cost, "held": held,
                    "input_tokens": request.input_tokens, "predicted": chosen.cost_usd, "p_good": chosen.p_good,
                    # the input's share of each: the output's is 300 tokens billed, the predictor's length predicted
                    "input_cost": cost - spec.price.cost(0, ANSWER_TOKENS),
                    "predicted_input": chosen.cost_usd - spec.price.cost(0, chosen.output_tokens),
                    "list_cost": spec.price.cost(request.input_tokens, ANSWER_TOKENS),
                    "quality": float(frame[f"quality__{router.artifact_name(spec)}"].iloc[row]),
                })

    started = time.perf_counter()
    asyncio.run(replay())
    routed_s = time.perf_counter() - started

    names = [s.name for s in catalog]
    result = {
        "sessions": args.sessions, "turns_per_session": args.turns, "seed": args.seed, "profile": args.profile,
        "willingness_to_pay": profile.willingness_to_pay, "catalog": names,
        "input_tokens_per_turn": {"first": requests[[e[2] for e in events].index(0)].input_tokens,
                                  "mean": float(np.mean([r.input_tokens for r in requests])),
                                  "max": max(r.input_tokens for r in requests)},
        "worlds": {w: summarise(turns[w], names, args.sessions, profile.willingness_to_pay) for w in WORLDS},
        "same_model_share": float(np.mean([a["model"] == b["model"] for a, b in zip(turns["list"], turns["cache"])])),
        "seconds": {"build_and_predict": round(built_s, 1), "route_both_worlds": round(routed_s, 1)},
    }
    lst, cch = result["worlds"]["list"], result["worlds"]["cache"]
    result["cache_vs_list"] = {"cost": cch["cost_per_turn_usd"] / lst["cost_per_turn_usd"] - 1,
                               "quality": cch["quality"] - lst["quality"]}
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def print_table(result: dict) -> None:
    w = result["worlds"]
    tok = result["input_tokens_per_turn"]
    print(f"{result['sessions']} sessions x {result['turns_per_session']} turns, profile {result['profile']} "
          f"(wtp ${result['willingness_to_pay']:g}/quality); input tokens per turn: first {tok['first']:,}, "
          f"mean {tok['mean']:,.0f}, max {tok['max']:,}")
    rows = [("realised $/turn", "cost_per_turn_usd", "{:.5f}"), ("predicted $/turn", "predicted_cost_per_turn_usd", "{:.5f}"),
            ("same turns at list price $/turn", "list_price_cost_per_turn_usd", "{:.5f}"),
            ("realised / predicted", "realised_over_predicted", "{:.2f}"),
            ("input part: realised $/turn", "input_cost_per_turn_usd", "{:.5f}"),
            ("input part: predicted $/turn", "predicted_input_cost_per_turn_usd", "{:.5f}"),
            ("input part: realised / predicted", "input_realised_over_predicted", "{:.2f}"), ("quality (RouterBench label)", "quality", "{:.3f}"),
            ("predicted P(good)", "predicted_p_good", "{:.3f}"), ("utility: quality - $/wtp", "utility", "{:.3f}"), ("switches per session", "switches_per_session", "{:.2f}"),
            ("input tokens read from cache", "input_tokens_read_from_cache", "{:.1%}")]
    print(f"| {'':32} | {'list price':>12} | {'cache-aware':>12} |")
    for label, key, fmt in rows:
        print(f"| {label:32} | {fmt.format(w['list'][key]):>12} | {fmt.format(w['cache'][key]):>12} |")
    for m in result["catalog"]:
        a, b = w["list"]["share"].get(m, 0.0), w["cache"]["share"].get(m, 0.0)
        if a or b:
            print(f"| {'share ' + m:32} | {a:>12.1%} | {b:>12.1%} |")
    d = result["cache_vs_list"]
    print(f"cache-aware vs list price: cost {d['cost']:+.1%}, quality {d['quality']:+.3f}; "
          f"same model on {result['same_model_share']:.1%} of turns; {result['seconds']}")


if __name__ == "__main__":
    sys.exit(main())
