"""Gateway overhead: latency added over calling the upstream directly, streaming TTFT, and
requests/s at 1, 16 and 64 concurrent clients.

Three processes, so the load generator does not share an interpreter with what it measures:
the built-in simulator with its latencies scaled to zero, `openclaw-router serve`
with a catalog of the 11 demo model names all pointing at that upstream, and this script's
async httpx clients. `auto` rows include the routing decision (prompt embedding + LightGBM +
policy) with the shipped artifact; `named` rows bypass routing; both with the cache off, so
every request pays the full path.

`agent` rows send what OpenClaw sends on every turn (a 40 KB system prompt, 12 function tools,
the replayed history, `stream: true` with usage, `max_completion_tokens`) to a second gateway
with the default cache settings (exact + semantic, every last user message distinct, so every
request is a lookup that misses and then a store).

    python bench/bench_gateway.py [--requests 400] [--artifact models/default] [--out bench/results/gateway.json]
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that checks whether a number is prime.",
    "Explain the difference between TCP and UDP in two sentences.",
    "Solve for x: 3x + 7 = 22.",
    "Summarise the causes of the First World War.",
    "Translate 'good morning, how are you?' into Spanish.",
    "What does the SQL keyword HAVING do?",
    "Give me three names for a bakery.",
]


def serve_upstream() -> None:
    """The built-in simulator with its latencies scaled to zero: an upstream that answers at once."""
    import socket

    import uvicorn

    from service.simulator import Simulator

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(Simulator(time_scale=0.0).app, log_level="warning", access_log=False)).run(sockets=[sock])


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError(f"{cmd} did not start")
    # Keep reading what it prints: a full pipe would block the server mid-benchmark.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, line


def gateway_config(upstream: str, artifact: Path, db: str, cache: bool = False) -> dict:
    demo = yaml.safe_load((REPO / "service" / "default_config.yaml").read_text())
    for m in demo["models"]:
        m["provider"] = "upstream"
    return {
        "providers": {"upstream": {"kind": "openai", "base_url": upstream, "timeout_s": 30, "max_connections": 256}},
        "models": demo["models"],
        "router": {"artifact": str(artifact)},
        "server": {"db": db, "prompt_storage": "hash"},
        "cache": {} if cache else {"enabled": False},
    }


# Every request of the run asks something new: the gateway memoises embeddings, and a repeated
# conversation reads as the client regenerating an answer (an implicit-feedback write).
_SERIAL = itertools.count()


def body(i: int, model: str, stream: bool) -> dict:
    content = PROMPTS[i % len(PROMPTS)] + f" (#{next(_SERIAL)})"
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


AGENT_SYSTEM = "You are OpenClaw, a personal agent working in the user's workspace. " + "Follow the workspace rules. " * 1450
AGENT_TOOLS = [
    {"type": "function", "function": {
        "name": f"tool_{k}", "description": f"Tool {k}: reads, writes or searches the workspace. " * 4,
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "query": {"type": "string"}, "limit": {"type": "integer"}},
                       "required": ["path"]}}}
    for k in range(12)
]


def agent_body(i: int, model: str) -> dict:
    """An OpenClaw turn: the whole history replayed, a new user message last."""
    history = []
    for turn in range(3):
        history += [{"role": "user", "content": f"{PROMPTS[(i + turn) % len(PROMPTS)]} (turn {turn})"},
                    {"role": "assistant", "content": "Done: " + "here is what I found. " * 20}]
    return {"model": model, "messages": [{"role": "system", "content": AGENT_SYSTEM}, *history,
                                         {"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" (#{next(_SERIAL)})"}],
            "tools": AGENT_TOOLS, "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 1024}


def _carries_output(line: str) -> bool:
    """A content token or a tool call (an agent's turn often answers with a tool call only)."""
    compact = line.replace(" ", "")
    return ('"content":"' in compact and '"content":""' not in compact) or '"tool_calls":[{' in compact


async def one(client: httpx.AsyncClient, url: str, payload: dict) -> tuple[float, float]:
    """(total latency, time to the first output chunk or the full answer) in seconds."""
    t0 = time.perf_counter()
    if not payload["stream"]:
        r = await client.post(url, json=payload)
        r.raise_for_status()
        t = time.perf_counter() - t0
        return t, t
    ttft = None
    async with client.stream("POST", url, json=payload) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: ") and _carries_output(line):
                ttft = time.perf_counter() - t0
    return time.perf_counter() - t0, ttft or float("nan")


async def sequential(url: str, model: str, stream: bool, n: int, make=body) -> np.ndarray:
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(20):  # warm-up: connections, the embedder, the boosters
            await one(client, url, make(i, model, stream))
        return np.array([await one(client, url, make(i, model, stream)) for i in range(n)])


async def measure_agent(upstream: str, gateway: str, n: int) -> dict:
    """Streaming OpenClaw turns, direct and through the cache-on gateway (`auto` and named)."""
    rows: dict = {}
    targets = [("direct", f"{upstream}/chat/completions", "gpt-3.5-turbo-1106"),
               ("named", f"{gateway}/v1/chat/completions", "gpt-3.5-turbo-1106"),
               ("auto", f"{gateway}/v1/chat/completions", "auto")]
    for label, url, model in targets:
        print(f"measuring agent {label}", file=sys.stderr, flush=True)
        streamed = await sequential(url, model, True, n, make=lambda i, m, _s: agent_body(i, m))
        rows[label] = {"latency_p50": ms(streamed[:, 0], 50), "latency_p99": ms(streamed[:, 0], 99),
                       "ttft_p50": ms(streamed[:, 1], 50), "ttft_p99": ms(streamed[:, 1], 99)}
    for label in ("named", "auto"):
        rows[f"added_{label}"] = {k: round(rows[label][k] - rows["direct"][k], 2) for k in ("latency_p50", "ttft_p50")}
    return rows


async def first_bursts(gateway: str, clients: int = 16) -> dict:
    """Median and max latency (ms) of the first two bursts of `clients` concurrent `auto` requests
    a freshly started gateway answers: what start-up left for the first requests to pay."""
    url = f"{gateway}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=60) as client:
        # Answered once start-up is over (the socket listens before it, requests wait in the backlog).
        (await client.get(f"{gateway}/healthz")).raise_for_status()
    out = {}
    for label in ("first", "second"):
        async with httpx.AsyncClient(timeout=30) as client:
            done = await asyncio.gather(*(one(client, url, body(i, "auto", False)) for i in range(clients)))
        times = np.array([t for t, _ in done])
        out[label] = {"p50": ms(times, 50), "max": round(float(times.max()) * 1000, 2)}
    return out


async def throughput(url: str, model: str, clients: int, seconds: float) -> float:
    """Completed requests/s with `clients` concurrent clients, each with its own connection
    (one shared httpx pool of 64 connections would measure the pool, not the servers)."""
    done = 0
    deadline = 0.0

    async def worker(k: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=60) as client:
            await one(client, url, body(k, model, False))
            await ready.wait()
            i = k
            while time.perf_counter() < deadline:
                await one(client, url, body(i, model, False))
                done += 1
                i += clients

    ready = asyncio.Event()
    tasks = [asyncio.create_task(worker(k)) for k in range(clients)]
    await asyncio.sleep(0.5)  # every worker connected and warm
    t0 = time.perf_counter()
    deadline = t0 + seconds
    ready.set()
    await asyncio.gather(*tasks)
    return done / (time.perf_counter() - t0)


def server_side_overhead(db: str, since: float) -> dict:
    """Per request, the gateway's own time: handler latency minus the upstream attempts, as logged.
    Unlike the client-side difference it excludes the extra process hop, which on a loaded machine
    is mostly the OS scheduler's time."""
    from router.outcome_log import read_outcomes

    log = read_outcomes(db, since=since)
    log = log[log.status == "ok"]
    upstream = log.attempts.map(lambda a: sum(x.get("latency_s") or 0.0 for x in a))
    rows = {}
    for label, part in (("named", log.profile.isna()), ("auto", log.profile.notna())):
        own = (log.latency_s - upstream)[part & ~log.stream].to_numpy()
        if len(own):
            rows[label] = {"p50": ms(own, 50), "p99": ms(own, 99), "n": int(len(own))}
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), a measure the machine's load does not inflate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(x: np.ndarray, q: float) -> float:
    return round(float(np.nanpercentile(x, q)) * 1000, 2)


async def measure(upstream: str, gateway: str, n: int, seconds: float, routed: bool, db: str, gateway_pid: int) -> dict:
    direct_url = f"{upstream}/chat/completions"
    gw_url = f"{gateway}/v1/chat/completions"
    rows: dict = {"latency_ms": {}, "ttft_ms": {}, "rps": {}}
    targets = [("direct", direct_url, "gpt-3.5-turbo-1106"), ("named", gw_url, "gpt-3.5-turbo-1106")]
    if routed:
        targets.append(("auto", gw_url, "auto"))
    for label, url, model in targets:
        print(f"measuring {label}", file=sys.stderr, flush=True)
        since, cpu = time.time(), cpu_seconds(gateway_pid)
        plain = await sequential(url, model, False, n)
        if label != "direct":
            rows.setdefault("server_side_overhead_ms", {}).update(server_side_overhead(db, since))
            # Includes the warm-up requests and the upstream call (httpx) the gateway makes.
            rows.setdefault("gateway_cpu_ms_per_request", {})[label] = round((cpu_seconds(gateway_pid) - cpu) / (n + 20) * 1000, 2)
        streamed = await sequential(url, model, True, n)
        rows["latency_ms"][label] = {"p50": ms(plain[:, 0], 50), "p99": ms(plain[:, 0], 99)}
        rows["ttft_ms"][label] = {"p50": ms(streamed[:, 1], 50), "p99": ms(streamed[:, 1], 99)}
        rows["rps"][label] = {str(c): round(await throughput(url, model, c, seconds), 1) for c in (1, 16, 64)}
    for label in [t[0] for t in targets if t[0] != "direct"]:
        rows.setdefault("added_ms", {})[label] = {
            "latency_p50": round(rows["latency_ms"][label]["p50"] - rows["latency_ms"]["direct"]["p50"], 2),
            "latency_p99": round(rows["latency_ms"][label]["p99"] - rows["latency_ms"]["direct"]["p99"], 2),
            "ttft_p50": round(rows["ttft_ms"][label]["p50"] - rows["ttft_ms"]["direct"]["p50"], 2),
        }
    return rows


async def decision_placement(artifact: Path) -> dict:
    """Routing decision inline on the event loop vs in the threadpool (as the gateway does):
    decision latency and the loop's lag (how late a 1 ms timer fires) meanwhile, in-process."""
    from starlette.concurrency import run_in_threadpool

    from router.config import load_config
    from router.embedding import shared_embedder
    from router.engine import LearnedRouter
    from router.request_view import view_chat_request

    config = load_config(REPO / "service" / "default_config.yaml")
    router, embedder = LearnedRouter.load(artifact), shared_embedder()
    profile = config.router.profiles[config.router.default_profile]
    requests = [view_chat_request(body(i, "auto", False)) for i in range(64)]

    def decide(request):
        return router.route(request, catalog=config.models, profile=profile, embedding=embedder.encode_one(request.text))

    for request in requests[:8]:
        decide(request)
    rows = {}
    for clients in (1, 16):
        for mode in ("inline", "threadpool"):
            stop, lags = asyncio.Event(), []

            async def probe() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.001)
                    lags.append(time.perf_counter() - t - 0.001)

            async def one(request) -> float:
                t = time.perf_counter()
                decide(request) if mode == "inline" else await run_in_threadpool(decide, request)
                return time.perf_counter() - t

            prober = asyncio.create_task(probe())
            latencies: list[float] = []
            for k in range(0, len(requests), clients):
                latencies += await asyncio.gather(*(one(r) for r in requests[k:k + clients]))
            stop.set()
            await prober
            rows[f"{mode}, {clients} clients"] = {
                "decision_p50_ms": ms(np.array(latencies), 50), "loop_lag_p50_ms": ms(np.array(lags), 50),
                "loop_lag_p99_ms": ms(np.array(lags), 99),
            }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per latency measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput measurement")
    parser.add_argument("--artifact", default=str(REPO / "models" / "default"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gateway.json"))
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream()
        return 0
    artifact = Path(args.artifact).resolve()
    routed = (artifact / "manifest.json").exists()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        upstream_proc, upstream = start([sys.executable, __file__, "--serve-upstream"], env)
        config = Path(tmp) / "bench.yaml"
        db = f"sqlite:///{tmp}/outcomes.sqlite"
        config.write_text(yaml.safe_dump(gateway_config(upstream, artifact, db)))
        gw_proc, line = start([sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", "0"], env)
        gateway = line.split()[3]
        try:
            rows = asyncio.run(measure(upstream, gateway, args.requests, args.seconds, routed, db, gw_proc.pid))
            gw_proc.terminate()
            gw_proc.wait(30)
            if routed:
                config.write_text(yaml.safe_dump(gateway_config(upstream, artifact, f"sqlite:///{tmp}/agent.sqlite", cache=True)))
                gw_proc, line = start([sys.executable, "-m", "service.cli", "serve", "--config", str(config), "--port", "0"], env)
                rows["first_bursts_after_start_ms"] = asyncio.run(first_bursts(line.split()[3]))
                rows["agent_streaming_ms"] = asyncio.run(measure_agent(upstream, line.split()[3], args.requests))
        finally:
            for proc in (gw_proc, upstream_proc):
                proc.terminate()
                proc.wait(30)
    if routed:
        rows["decision_placement"] = asyncio.run(decision_placement(artifact))
    result = {"cpu_count": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()], "requests": args.requests, "artifact": str(artifact) if routed else None, **rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
