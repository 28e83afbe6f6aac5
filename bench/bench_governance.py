"""Governance overhead: latency a gateway adds with keys + budgets on, against the same gateway
without governance, for the embedded store (SQLite) and the scale-out store (PostgreSQL + Redis).

The upstream is the built-in simulator with latencies scaled to zero (in this process, a thread);
each gateway runs in its own process (`--serve`), with a named model (no routing) so that only
the governance hook differs. Sequential requests: p50/p99 of end-to-end latency.

    python bench/bench_governance.py [--requests 300] [--pg postgresql://postgres@127.0.0.1/test]
                                     [--redis redis://127.0.0.1:6379/0] [--out bench/results/governance.json]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
MASTER = "bench-master-" + secrets.token_hex(8)


def serve(args: argparse.Namespace) -> None:
    """Child process: one gateway on a free port; prints the port."""
    import socket

    import uvicorn

    from router.config import parse_config
    from service.app import create_app
    from service.governance.runtime import Governance

    spec = json.loads(args.serve)
    config = parse_config(json.dumps({
        "providers": {"up": {"kind": "openai", "base_url": spec["upstream"], "timeout_s": 30}},
        "models": [{"name": "bench-model", "provider": "up", "upstream": "gpt-3.5-turbo-1106",
                    "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}}],
        "server": {"db": spec["db"], "redis_url": spec.get("redis"), "prompt_storage": "none"},
        "cache": {"enabled": False},
    }))
    governance = Governance.from_config(config) if spec["governance"] else None
    app = create_app(config, load_artifact=False, governance=governance)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def start_upstream() -> tuple[str, object]:
    """The simulator at zero latency in a thread; a TCP-flagged socket so asyncio disables Nagle."""
    import asyncio
    import socket
    import threading

    import uvicorn

    from service.simulator import Simulator

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    server = uvicorn.Server(uvicorn.Config(Simulator(time_scale=0.0).app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(5)

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def start_gateway(spec: dict, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    port = proc.stdout.readline().strip()
    if not port:
        proc.kill()
        raise RuntimeError(f"gateway {spec} did not start")
    return proc, f"http://127.0.0.1:{port}"


def measure(url: str, secret: str | None, n: int) -> dict[str, float]:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    lat = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        for i in range(n + 20):
            t0 = time.perf_counter()
            r = c.post("/v1/chat/completions", json={"model": "bench-model", "max_tokens": 64,
                                                     "messages": [{"role": "user", "content": f"hello number {i}"}]})
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 20:  # warm-up excluded
                lat.append(dt)
    a = np.array(lat) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": n}


def run_mode(name: str, spec: dict, n: int, with_key: bool) -> dict:
    env = {**os.environ, "OPENCLAW_MASTER_KEY": MASTER, "OPENCLAW_REDIS_PREFIX": "bench-" + secrets.token_hex(4),
           "PYTHONPATH": str(REPO)}
    proc, url = start_gateway(spec, env)
    try:
        secret = None
        if with_key:
            admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
            made = admin.post("/admin/keys", json={"name": "bench", "team": "bench", "rpm": 1_000_000}).json()
            secret = made["secret"]
            for scope, scope_id in (("key", made["key"]["id"]), ("team", "bench")):
                admin.post("/admin/budgets", json={"scope": scope, "scope_id": scope_id, "period": "month", "limit_usd": 1000})
        result = measure(url, secret, n)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{name:<34} p50 {result['p50_ms']:6.2f} ms   p99 {result['p99_ms']:6.2f} ms", flush=True)
    return {"mode": name, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--pg", default=None, help="PostgreSQL URL for the scale-out store (a fresh schema is used)")
    parser.add_argument("--redis", default=None)
    parser.add_argument("--out", default="bench/results/governance.json")
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return 0
    upstream, stop = start_upstream()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = {"upstream": f"{upstream}/v1", "db": f"sqlite:///{tmp}/a.sqlite"}
            results.append(run_mode("no governance", {**base, "governance": False}, args.requests, False))
            results.append(run_mode("key + 2 budgets, SQLite", {**base, "db": f"sqlite:///{tmp}/b.sqlite", "governance": True},
                                    args.requests, True))
            if args.pg and args.redis:
                import psycopg

                schema = "bench_" + secrets.token_hex(4)
                with psycopg.connect(args.pg, autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA {schema}")
                try:
                    sep = "&" if "?" in args.pg else "?"
                    pg = f"{args.pg}{sep}options=-csearch_path%3D{schema}"
                    results.append(run_mode("key + 2 budgets, PostgreSQL + Redis",
                                            {**base, "db": pg, "redis": args.redis, "governance": True}, args.requests, True))
                finally:
                    with psycopg.connect(args.pg, autocommit=True) as conn:
                        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"requests": args.requests, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
