"""Security hardening, against a real gateway (`python -m service.cli serve` in a subprocess) in
front of an adversarial upstream on 127.0.0.1 that echoes the Authorization header it is sent:

- no part of the provider key reaches a client or the outcome log, wherever an upstream's text is cut;
- a large body is parsed and validated off the event loop: /healthz is answered meanwhile;
- OPENCLAW_MASTER_KEY mounted from a file (a trailing line break) still opens the admin API, and a
  short one is warned about; refused admin attempts are counted and logged, not once per attempt;
- the gateway's SQLite files (outcome log, cache) and the folders it makes for them are owner-only;
- no /docs, /redoc or /openapi.json;
- the two text regexes that were quadratic are linear, with the same matches.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.asgi_thread import serve_in_thread
from tests.conftest import require_dataset
from tests.fake_upstream import read_body
from tests.serve_harness import launch, stop

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-UPSTREAM-SECRET-0123456789abcdef"
MASTER = "mk-from-a-file-0123456"  # 22 characters: short enough to be warned about
PARTIAL = UPSTREAM_KEY[:-2]  # what a cut 2 characters before the key's end leaves of it
MODELS = ("ok", "echo400txt", "echo200bad", "echostream")
HI = [{"role": "user", "content": "hi"}]


async def echoing_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An OpenAI-compatible upstream whose errors quote the Authorization header, placed so that
    the gateway's cuts (500 characters of an error body, 200 of a non-JSON answer or stream
    event) fall 2 characters before the key's end."""
    if scope["type"] != "http":
        return
    body = json.loads(await read_body(receive) or b"{}")
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    model, stream = body.get("model"), bool(body.get("stream"))

    async def reply(status: int, payload: bytes, ctype: str, more: bool = False) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode())]})
        await send({"type": "http.response.body", "body": payload, "more_body": more})

    if model == "echo400txt":  # a proxy's plain-text debug page
        said = "bad request; you sent authorization: " + auth
        await reply(400, ("z" * (500 - len(said) + 2) + said + " -- end").encode(), "text/plain")
    elif model == "echo200bad":  # a 200 that is no JSON
        said = " auth=" + auth
        await reply(200, ("y" * (200 - len(said) + 2) + said + " trailing").encode(), "text/plain")
    elif model == "echostream" and stream:  # one good chunk, then an event that is no JSON
        first = {"id": "u", "object": "chat.completion.chunk", "created": 1, "model": model,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial "}}]}
        await reply(200, f"data: {json.dumps(first)}\n\n".encode(), "text/event-stream", more=True)
        said = "{not json; debug auth=" + auth
        await send({"type": "http.response.body", "body": f"data: {'q' * (200 - len(said) + 2)}{said}\n\n".encode()})
    else:
        answer = {"id": "up-1", "object": "chat.completion", "created": 1, "model": model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        await reply(200, json.dumps(answer).encode(), "application/json")


class Gateway:
    def __init__(self, url: str, state: Path, stderr: Path, proc: subprocess.Popen):
        self.url, self.state, self.stderr_path, self.proc = url, state, stderr, proc

    def client(self, key: str = MASTER) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def log(self) -> str:
        return self.stderr_path.read_text()

    def outcome(self, request_id: str) -> dict[str, Any]:
        """The request's row in the outcome log, once its writer has committed it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            db = sqlite3.connect(f"file:{self.state / 'outcomes.sqlite'}?mode=ro", uri=True)
            db.row_factory = sqlite3.Row
            try:
                row = db.execute("SELECT * FROM outcomes WHERE request_id = ?", (request_id,)).fetchone()
            finally:
                db.close()
            if row is not None:
                return dict(row)
            time.sleep(0.05)
        raise AssertionError(f"no outcome logged for {request_id}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    upstream_url, stop_upstream = serve_in_thread(echoing_upstream)
    root = tmp_path_factory.mktemp("hardening")
    state = root / "state" / "gateway"  # not there yet: the gateway makes both folders
    models = "\n".join(f"  - {{name: {m}, provider: fake, price: {{input_per_1m: 1, output_per_1m: 2}}}}" for m in MODELS)
    (root / "config.yaml").write_text(f"""
providers:
  fake: {{kind: openai, base_url: "{upstream_url}/v1", api_key_env: OC_HARDENING_UPSTREAM_KEY, timeout_s: 10}}
reliability: {{max_retries: 0}}
server: {{db: "sqlite:///{state}/outcomes.sqlite", prompt_storage: full, max_body_bytes: 12000000}}
cache: {{enabled: true, path: "{state}/cache"}}
models:
{models}
""")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("OPENCLAW_")}
    # Both as a secret mounted from a file arrives: with a trailing line break.
    env.update(OC_HARDENING_UPSTREAM_KEY=UPSTREAM_KEY + "\n", OPENCLAW_MASTER_KEY=MASTER + "\n", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    stderr = root / "gateway.stderr"
    try:
        proc, url = launch(root / "config.yaml", root, env, stderr)
        try:
            yield Gateway(url, state, stderr, proc)
        finally:
            stop(proc, signal.SIGINT)
    finally:
        stop_upstream()


# 1. The provider key, cut before it was scrubbed, reached clients minus its last 2 characters.

def _assert_no_key(text: str) -> None:
    assert UPSTREAM_KEY[:12] not in text, text  # not the key, nor any cut of it


def test_a_plain_text_upstream_error_quoting_the_key_reaches_the_client_without_it(gateway):
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().chat.completions.create(model="echo400txt", messages=HI)
    message = refused.value.body["message"]
    assert "you sent authorization: Bearer ***" in message  # the upstream's words, the key scrubbed
    _assert_no_key(message)
    row = gateway.outcome(refused.value.response.headers["x-request-id"])
    assert "you sent authorization" in row["error"] and '"kind": "bad_request"' in row["attempts"]
    _assert_no_key(json.dumps(row))


def test_a_non_json_answer_quoting_the_key_is_logged_without_it(gateway):
    with pytest.raises(openai.APIStatusError) as failed:
        gateway.client().chat.completions.create(model="echo200bad", messages=HI)
    _assert_no_key(failed.value.response.text)
    row = gateway.outcome(failed.value.response.headers["x-request-id"])
    assert "response is not JSON" in row["attempts"] and "auth=Bearer ***" in row["attempts"]
    _assert_no_key(json.dumps(row))


def test_a_stream_event_quoting_the_key_interrupts_the_stream_without_it(gateway):
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {MASTER}"},
                      json={"model": "echostream", "stream": True, "messages": HI}, timeout=30) as response:
        events = response.read().decode()
        request_id = response.headers["x-request-id"]
    assert "stream_interrupted" in events and "debug auth=Bearer ***" in events, events
    _assert_no_key(events)
    row = gateway.outcome(request_id)
    assert "invalid JSON in stream event" in row["attempts"]
    _assert_no_key(json.dumps(row))
    _assert_no_key(gateway.log())


# 2. A large body was parsed and validated on the event loop: every other request waited.

def test_healthz_is_answered_while_a_large_body_is_parsed_and_validated(gateway):
    # 40,000 tools (7.7 MB, inside max_body_bytes) and a tool_choice naming none of them: the 400
    # comes only once the whole body is parsed and checked, ~1 s of CPU.
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": "d" * 50,
                                               "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}
             for i in range(40_000)]
    body = json.dumps({"model": "ok", "messages": HI, "tools": tools,
                       "tool_choice": {"type": "function", "function": {"name": "missing"}}}).encode()
    host, port = gateway.url.removeprefix("http://").split(":")
    answered: list[float] = []  # when each probe came back, from the body's last byte
    with httpx.Client(base_url=gateway.url, timeout=60) as probe, socket.create_connection((host, int(port))) as sock:
        probe.get("/healthz")  # connected
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {MASTER}\r\n"
                     f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body[:-1])
        reply, done, judged_at = b"", threading.Event(), 0.0

        def read_reply() -> None:
            nonlocal reply, judged_at
            sock.settimeout(60)
            while b"\r\n\r\n" not in reply:
                reply += sock.recv(65536)
            judged_at = time.monotonic()
            done.set()

        reader = threading.Thread(target=read_reply)
        started = time.monotonic()
        sock.sendall(body[-1:])  # the gateway judges the body once this last byte comes
        reader.start()
        # One probe after another until the 400 is back, the first sent while the body is judged.
        while not answered or not done.is_set():
            assert probe.get("/healthz").status_code == 200
            answered.append(time.monotonic() - started)
        reader.join()
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    # Judged on the loop, no probe sent once judging began comes back before the 400: at most the
    # first, when it beat the last byte to the loop. Off it, the loop gets the GIL back between the
    # worker's steps and probes come back meanwhile, however fast the machine. (Not how long one
    # waited: a single C step (json.loads, pydantic) holds the GIL, and a probe waited up to 0.9 of
    # the judging off the loop too, as long as on it.)
    before = [round(t, 2) for t in answered if t < judged_at - started]
    assert len(before) >= 2, f"/healthz came back at {[round(t, 2) for t in answered]} s; the 400 at {judged_at - started:.2f} s"


def test_a_large_body_nested_too_deeply_is_still_a_400(gateway):
    body = b'{"model": "ok", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body, timeout=30,
                          headers={"authorization": f"Bearer {MASTER}", "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


# 3 and 4. The master key from a file; refused admin attempts.

def test_a_master_key_with_a_trailing_line_break_opens_the_admin_api(gateway):
    response = httpx.get(f"{gateway.url}/admin/keys", headers={"authorization": f"Bearer {MASTER}"})
    assert response.status_code == 200, response.text


def test_a_short_master_key_is_warned_about_at_start(gateway):
    assert re.search(r"OPENCLAW_MASTER_KEY is 22 characters long.*at least 32", gateway.log())


def test_refused_admin_attempts_are_counted_and_logged_once_not_per_attempt(gateway):
    with httpx.Client(base_url=gateway.url) as c:
        statuses = {c.get("/admin/keys", headers={"authorization": f"Bearer guess-{i}"}).status_code for i in range(30)}
        statuses |= {c.get("/admin/keys").status_code for _ in range(5)}
        metrics = c.get("/metrics", headers={"authorization": f"Bearer {MASTER}"}).text
    assert statuses == {401}
    assert 'openclaw_governance_refusals_total{reason="admin_invalid_key"} 30.0' in metrics
    assert 'openclaw_governance_refusals_total{reason="admin_missing_key"} 5.0' in metrics
    lines = [ln for ln in gateway.log().splitlines() if "admin API: refused a request" in ln]
    assert len(lines) == 1, lines  # 35 refusals within the minute: one line
    assert "guess-" not in gateway.log()  # never the presented secret


# 5. The gateway's SQLite files hold key hashes, spend and every tenant's prompts.

def test_the_gateway_makes_its_sqlite_files_and_their_folders_owner_only(gateway):
    gateway.client().chat.completions.create(model="ok", messages=[{"role": "user", "content": "a cached question"}])
    made = [gateway.state.parent, gateway.state, gateway.state / "cache"]
    files = [Path(p) for p in glob.glob(f"{gateway.state}/**/*.sqlite*", recursive=True)]
    assert {p.name for p in files} >= {"outcomes.sqlite", "outcomes.sqlite-wal", "outcomes.sqlite-shm", "cache.sqlite",
                                       "cache.sqlite-wal", "cache.sqlite-shm"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o600" for p in files}
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {str(p): "0o700" for p in made}


def test_an_existing_sqlite_file_and_folder_keep_their_modes(tmp_path):
    from router.cache.store import Store
    from router.outcome_log import SQLiteStore
    from service.governance.db import SqliteDatabase

    (tmp_path / "cache").mkdir(mode=0o755)
    for made in (tmp_path / "outcomes.sqlite", tmp_path / "governance.sqlite", tmp_path / "cache" / "cache.sqlite"):
        made.touch(mode=0o640)
        made.chmod(0o640)
    SQLiteStore(tmp_path / "outcomes.sqlite").close()
    SqliteDatabase(str(tmp_path / "governance.sqlite")).close()
    Store(tmp_path / "cache").close()
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*.sqlite")} == {
        "outcomes.sqlite": 0o640, "governance.sqlite": 0o640, "cache.sqlite": 0o640}


# 6. No API browser that loads from a CDN, and none without a key.

def test_no_docs_redoc_or_openapi_schema(gateway):
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        response = httpx.get(f"{gateway.url}{path}")
        assert response.status_code == 404, (path, response.text[:200])
        assert "cdn.jsdelivr.net" not in response.text


def test_the_docs_do_not_point_to_an_api_browser():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert not re.search(r"(?<![\w/.-])/(docs|redoc|openapi\.json)\b(?!/)", doc.read_text()), doc


# 7. Regexes that were quadratic in the text's length.

OLD_NUMBER_RUN = re.compile(r"\d+(?:[.,]\d+)*(?:\s*(?:->|[/:–—-]|\b(?:to|through)\b)\s*\d+(?:[.,]\d+)*)+")
OLD_CHOICE = re.compile(r"^\s*\(?[a-e][).:]\s+\S", re.M)
PIECES = ["1", "2", "٣", ".", ",", "/", "-", "–", ":", "->", " ", "\n", "\t", "to", "through", "x", "a", "b)", "(c", ")",
          "\r", "\u2028"]


def _same_matches(text: str) -> bool:
    from router.cache.order_rules import _NUMBER_RUN
    from router.features import _CHOICE

    # findall of the number runs as before; the options' ends as before (a match no longer takes
    # in the blank lines before its option, and only its count is a feature).
    return (OLD_NUMBER_RUN.findall(text) == _NUMBER_RUN.findall(text)
            and [m.end() for m in OLD_CHOICE.finditer(text)] == [m.end() for m in _CHOICE.finditer(text)])


def test_number_runs_and_choice_options_match_as_before_on_small_inputs():
    rng = random.Random(7)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14))) for _ in range(50_000)]
    texts += ["03/04/2024", "from 3 to 5", "1.5 -> 2,000.25 through 7", "v1.2/3", ".5/6", "a) one\n\n  (b) two\nc: three",
              "\n\n a) x", "12.5-7 and 8:30 to 9:45"]
    assert [t for t in texts if not _same_matches(t)] == []


def test_number_runs_and_choice_options_match_as_before_on_real_prompts():
    datasets = Path(os.environ.get("OPENCLAW_DATASETS", REPO.parent / "shared" / "datasets"))
    require_dataset(datasets / "qqp_pairs")
    import pandas as pd

    texts = []
    for table in [*glob.glob(str(datasets / "qqp_pairs" / "*.parquet")), *glob.glob(str(REPO / "data" / "*.csv"))]:
        frame = pd.read_parquet(table) if table.endswith(".parquet") else pd.read_csv(table)
        texts += [str(t).lower() for col in ("text_a", "text_b", "prompt") if col in frame for t in frame[col]]
    assert len(texts) > 80_000
    assert [t for t in texts if not _same_matches(t)] == []


def _adversarial_seconds(n: int) -> float:
    """The CPU time of this thread (a loaded machine's other work not counted) over the texts that
    took the old patterns quadratic time, n characters long."""
    from router.cache.order_rules import _NUMBER_RUN, runs_reordered
    from router.features import _CHOICE

    started = time.thread_time()
    assert not runs_reordered("1" * n, "1." * (n // 2))
    assert not runs_reordered("1 " * (n // 2), "12" * (n // 2) + "/")
    assert _NUMBER_RUN.findall("1" * n) == [] and _CHOICE.findall("\n" * n) == []
    assert len(_CHOICE.findall(" \n" * n + "a) x")) == 1
    return time.thread_time() - started


def test_adversarial_texts_take_linear_time():
    # The old patterns took 46 s and 9.6 s at 40,000 characters. Four times the text takes four
    # times as long when linear, sixteen when quadratic, whatever the machine's speed; the best of
    # 5, taken in turns, so that a moment's slowdown weighs on neither side alone.
    n = 10_000
    small, large = zip(*[(_adversarial_seconds(n), _adversarial_seconds(4 * n)) for _ in range(5)])
    ratio = min(large) / min(small)
    assert ratio < 8, f"4x the text took {ratio:.1f}x as long"
