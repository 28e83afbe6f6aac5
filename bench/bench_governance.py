"""Governance overhead: latency a gateway adds with keys + budgets on, against the same gateway
without governance, for the embedded store (SQLite) and the scale-out store (PostgreSQL + Redis).

The upstream is the built-in simulator with latencies scaled to zero (in this process, a thread);
each gateway runs in its own process (`--serve`), with a named model (no routing) so that only
the governance hook differs. Sequential requests: p50/p99 of end-to-end latency.

    python bench/bench_governance.py [--requests 300] [--pg postgresql://postgres@127.0.0.1/test]
                                     [--redis redis://127.0.0.1:6379/0] [--out bench/results/governance.json]

`--dashboard ROWS`: the admin dashboard over a spend log of ROWS rows spread over the last week
(several keys, models, latencies), on SQLite (and PostgreSQL with `--pg`): how long each
/admin/dashboard call takes (the /ui page polls it every 15 s), and the latency of governed
requests (each reserves and settles a budget) sent while one runs, against the same requests
without it. Each poll asks a slightly different window, so that none is served from a cache.

    python bench/bench_governance.py --dashboard 1000000 [--pg ...] [--out bench/results/governance_dashboard.json]
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
MASTER = "bench-master-" + secrets.token_hex(16)  # 45 characters: no short-key warning


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
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # the port is bound before the app has started and listens
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"gateway {spec} did not answer /healthz")


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


def gateway_env() -> dict[str, str]:
    return {**os.environ, "OPENCLAW_MASTER_KEY": MASTER, "OPENCLAW_REDIS_PREFIX": "bench-" + secrets.token_hex(4),
            "PYTHONPATH": str(REPO)}


def governed_key(url: str) -> tuple[str, str]:
    """A key with a budget of its own and its team's: (key id, secret)."""
    admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
    made = admin.post("/admin/keys", json={"name": "bench", "team": "bench", "rpm": 1_000_000}).json()
    for scope, scope_id in (("key", made["key"]["id"]), ("team", "bench")):
        admin.post("/admin/budgets", json={"scope": scope, "scope_id": scope_id, "period": "month", "limit_usd": 1000})
    return made["key"]["id"], made["secret"]


def run_mode(name: str, spec: dict, n: int, with_key: bool) -> dict:
    proc, url = start_gateway(spec, gateway_env())
    try:
        secret = governed_key(url)[1] if with_key else None
        result = measure(url, secret, n)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{name:<34} p50 {result['p50_ms']:6.2f} ms   p99 {result['p99_ms']:6.2f} ms", flush=True)
    return {"mode": name, **result}


# ROWS spend rows over the last week: 7 keys, 4 models, 2 % refused (no model, no latency),
# 10 % cache hits, latencies up to 10 s, TTFT on two rows in three.
_FILL = {
    "sqlite": """WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
INSERT INTO gov_spend (request_id, ts, day, key_id, key_name, team, session_id, model, status, cache_status, cost_nusd,
  input_tokens, output_tokens, latency_s, ttft_s)
SELECT 'old-' || i, t, strftime('%Y-%m-%d', CAST(t AS INTEGER), 'unixepoch'), 'key_old' || (i % 7), 'old-key-' || (i % 7),
  'team' || (i % 3), 'sess-' || (i / 20), CASE WHEN i % 50 = 0 THEN NULL ELSE 'm' || (i % 4) END,
  CASE WHEN i % 50 = 0 THEN 'refused' WHEN i % 97 = 0 THEN 'error' ELSE 'ok' END,
  CASE WHEN i % 10 = 0 THEN 'hit' ELSE 'miss' END, CASE WHEN i % 50 = 0 THEN 0 ELSE abs(random()) % 5000000 END, 900, 120,
  CASE WHEN i % 50 = 0 THEN NULL ELSE (abs(random()) % 100000) / 10000.0 END,
  CASE WHEN i % 3 = 0 THEN NULL ELSE (abs(random()) % 100000) / 100000.0 END
FROM (SELECT i, {now} - (i % 604000) - (abs(random()) % 1000) / 1000.0 AS t FROM c)""",
    "postgres": """INSERT INTO gov_spend (request_id, ts, day, key_id, key_name, team, session_id, model, status, cache_status,
  cost_nusd, input_tokens, output_tokens, latency_s, ttft_s)
SELECT 'old-' || i, t, to_char(to_timestamp(t) AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 'key_old' || (i % 7), 'old-key-' || (i % 7),
  'team' || (i % 3), 'sess-' || (i / 20), CASE WHEN i % 50 = 0 THEN NULL ELSE 'm' || (i % 4) END,
  CASE WHEN i % 50 = 0 THEN 'refused' WHEN i % 97 = 0 THEN 'error' ELSE 'ok' END,
  CASE WHEN i % 10 = 0 THEN 'hit' ELSE 'miss' END, CASE WHEN i % 50 = 0 THEN 0 ELSE floor(random() * 5000000) END, 900, 120,
  CASE WHEN i % 50 = 0 THEN NULL ELSE floor(random() * 100000) / 10000.0 END,
  CASE WHEN i % 3 = 0 THEN NULL ELSE floor(random() * 100000) / 100000.0 END
FROM (SELECT i, {now} - (i % 604000) - random() AS t FROM generate_series(1, {rows}) AS i) c""",
}


def fill_spend(db_url: str, rows: int) -> None:
    sql = _FILL["postgres" if db_url.startswith("postgresql") else "sqlite"].format(rows=rows, now=time.time())
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql)
            conn.execute("ANALYZE gov_spend")
        return
    import sqlite3

    conn = sqlite3.connect(db_url[len("sqlite:///"):], timeout=60)
    conn.execute(sql)
    conn.commit()
    conn.close()


def dashboard_mode(name: str, spec: dict, rows: int, polls: int = 3) -> dict:
    """Dashboard calls over `rows` spend rows, and governed requests sent meanwhile and without."""
    import threading

    proc, url = start_gateway(spec, gateway_env())
    try:
        _, secret = governed_key(url)
        t0 = time.perf_counter()
        fill_spend(spec["db"], rows)
        filled_s = time.perf_counter() - t0
        admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"}, timeout=300)
        stop, calls, samples = threading.Event(), [], []

        def requests() -> None:
            with httpx.Client(base_url=url, headers={"authorization": f"Bearer {secret}"}, timeout=300) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    t = time.perf_counter()
                    c.post("/v1/chat/completions", json={"model": "bench-model", "max_tokens": 64, "messages": [
                        {"role": "user", "content": f"hello number {i}"}]}).raise_for_status()
                    samples.append((t, time.perf_counter() - t))

        sender = threading.Thread(target=requests)
        sender.start()
        time.sleep(5)
        quiet = (time.perf_counter() - 4, time.perf_counter())
        for i in range(polls):
            t = time.perf_counter()
            board = admin.get("/admin/dashboard", params={"since_s": 7 * 86400 + i}).json()
            calls.append((t, time.perf_counter()))
            time.sleep(2)
        stop.set()
        sender.join()
    finally:
        proc.terminate()
        proc.wait(10)
    without = np.array([dt for t, dt in samples if quiet[0] <= t < quiet[1]]) * 1000
    during = np.array([dt for t, dt in samples if any(a <= t < b for a, b in calls)]) * 1000
    result = {
        "mode": name, "rows": rows, "fill_s": filled_s, "dashboard_requests": board["summary"]["requests"],
        "dashboard_s": [b - a for a, b in calls],
        "requests_without": {"n": len(without), "p50_ms": float(np.percentile(without, 50)), "max_ms": float(without.max())},
        "requests_during": {"n": len(during), "p50_ms": float(np.percentile(during, 50)) if len(during) else None,
                            "p99_ms": float(np.percentile(during, 99)) if len(during) else None,
                            "max_ms": float(during.max()) if len(during) else None},
    }
    print(f"{name:<10} {rows} rows: /admin/dashboard {', '.join(f'{d:.2f}' for d in result['dashboard_s'])} s; "
          f"governed requests without it p50 {result['requests_without']['p50_ms']:.1f} ms (n={len(without)}), "
          f"while it runs p50 {result['requests_during']['p50_ms'] or 0:.1f} ms, max {result['requests_during']['max_ms'] or 0:.1f} ms "
          f"(n={len(during)})", flush=True)
    return result


def with_pg_schema(pg: str, fn):
    """`fn(url)` with `url` on a fresh schema of `pg`, dropped afterwards."""
    import psycopg

    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in pg else "?"
        return fn(f"{pg}{sep}options=-csearch_path%3D{schema}")
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--pg", default=None, help="PostgreSQL URL for the scale-out store (a fresh schema is used)")
    parser.add_argument("--redis", default=None)
    parser.add_argument("--dashboard", type=int, default=None, metavar="ROWS",
                        help="measure the admin dashboard over ROWS spend rows instead")
    parser.add_argument("--out", default=None, help="default bench/results/governance.json "
                        "(governance_dashboard.json with --dashboard)")
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return 0
    upstream, stop = start_upstream()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.dashboard:
                base = {"upstream": f"{upstream}/v1", "governance": True}
                results.append(dashboard_mode("SQLite", {**base, "db": f"sqlite:///{tmp}/d.sqlite"}, args.dashboard))
                if args.pg:
                    results.append(with_pg_schema(args.pg, lambda url: dashboard_mode("PostgreSQL", {**base, "db": url},
                                                                                      args.dashboard)))
                out = Path(args.out) if args.out else REPO / "bench" / "results" / "governance_dashboard.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"rows": args.dashboard, "results": results}, indent=2))
                return 0
            base = {"upstream": f"{upstream}/v1", "db": f"sqlite:///{tmp}/a.sqlite"}
            results.append(run_mode("no governance", {**base, "governance": False}, args.requests, False))
            results.append(run_mode("key + 2 budgets, SQLite", {**base, "db": f"sqlite:///{tmp}/b.sqlite", "governance": True},
                                    args.requests, True))
            if args.pg and args.redis:
                results.append(with_pg_schema(args.pg, lambda pg: run_mode(
                    "key + 2 budgets, PostgreSQL + Redis", {**base, "db": pg, "redis": args.redis, "governance": True},
                    args.requests, True)))
    finally:
        stop()
    out = Path(args.out) if args.out else REPO / "bench" / "results" / "governance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"requests": args.requests, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
