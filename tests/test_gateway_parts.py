"""The gateway's parts on their own: circuit breaker, RPM/TPM window, live state, outcome log
(real SQLite in WAL mode) and the SSE assembler."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import numpy as np
import pytest

from router.config import Limits
from router.outcome_log import OutcomeLog, OutcomeRecord, open_outcome_log, open_store, read_outcomes
from router.request_view import view_chat_request
from router.types import Candidate, Decision
from service.breaker import CircuitBreaker, RateWindow
from service.hooks.outcome_hook import OutcomeHook
from service.pipeline import RequestContext
from service.sse import Assembler, carries_output, completion_to_chunks


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_probes_once_and_closes():
    clock = Clock()
    b = CircuitBreaker(failures=2, cooldown_s=10, clock=clock)
    assert b.acquire("m") and not b.failure("m")
    assert b.failure("m") and b.state("m") == "open" and not b.available("m") and not b.acquire("m")
    clock.now += 10
    assert b.state("m") == "half_open" and b.available("m")
    assert b.acquire("m") and not b.acquire("m")  # exactly one probe
    assert b.failure("m") and b.state("m") == "open"  # a failed probe re-opens for another cooldown
    clock.now += 10
    assert b.acquire("m")
    b.success("m")
    assert b.state("m") == "closed" and b.acquire("m") and b.acquire("m")


def test_breaker_probe_is_given_back_only_by_its_holder():
    from service.breaker import PASS

    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=10, clock=clock)
    earlier = b.acquire("m")  # a call started while the circuit was closed
    assert earlier == PASS and b.failure("m")
    clock.now += 10
    probe = b.acquire("m")
    assert probe.probe
    b.release("m", earlier)  # the earlier call's client leaves: the probe is still in flight
    assert b.state("m") == "open" and b.acquire("m") is None
    b.release("m", probe)
    assert b.state("m") == "half_open"
    again = b.acquire("m")
    b.release("m", probe)  # a stale claim
    assert again.probe != probe.probe and b.acquire("m") is None
    clock.now += 10  # a probe that never reaches a verdict lapses after one more cooldown
    assert b.state("m") == "half_open" and b.acquire("m").probe


def test_a_probe_waiting_out_its_upstreams_timeout_does_not_lapse():
    # A hung upstream: the probe waits its full timeout (60 s by default, longer than the 30 s
    # cooldown). Lapsing at the cooldown let a second request probe the same hung model.
    from service.breaker import probe_lapse_s
    from tests.gateway_harness import fake_config

    config = fake_config("http://127.0.0.1:9/v1", "sqlite:///:memory:", timeout_s=60.0)
    lapse = probe_lapse_s(config)
    assert lapse > 60.0 + config.providers["fake"].connect_timeout_s
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=30, clock=clock, probe_lapse_s=lapse)
    b.failure("m")
    clock.now += 30
    assert b.acquire("m").probe
    clock.now += 60
    assert b.acquire("m") is None and b.state("m") == "open"
    clock.now += lapse - 60
    assert b.acquire("m").probe


def test_breaker_blocks_until_retry_after():
    clock = Clock()
    b = CircuitBreaker(failures=5, cooldown_s=10, clock=clock)
    b.failure("m", retry_after_s=3)
    assert b.state("m") == "blocked" and not b.acquire("m")
    clock.now += 3
    assert b.state("m") == "closed" and b.acquire("m")


def test_rate_window_counts_requests_and_tokens_over_a_minute():
    clock = Clock()
    w = RateWindow(clock=clock)
    limits = Limits(rpm=3, tpm=1000)
    w.add("m", 300)
    w.add("m", 300)
    w.add("m", 200, request=False)  # output tokens: no new request
    assert w.usage("m") == (2, 800)
    assert w.has_room("m", limits, 200) and not w.has_room("m", limits, 201)
    w.add("m", 0)
    assert not w.has_room("m", limits, 0)  # rpm reached
    clock.now += 60
    assert w.usage("m") == (0, 0) and w.has_room("m", limits, 1000)


def test_rate_window_says_when_it_has_room_again():
    clock = Clock()
    w = RateWindow(clock=clock)
    limits = Limits(rpm=2, tpm=1000)
    assert w.wait_s("m", limits, 100) == 0
    w.add("m", 600)
    clock.now += 10
    w.add("m", 100)
    clock.now += 5
    assert w.wait_s("m", limits, 100) == pytest.approx(45)  # rpm: the first request leaves at 60 s
    assert w.wait_s("m", Limits(tpm=1000), 400) == pytest.approx(45)  # tpm: so do its 600 tokens
    assert w.wait_s("m", Limits(tpm=1000), 300) == 0
    assert w.wait_s("m", Limits(tpm=1000), 5000) == float("inf")  # more than the limit: no wait helps


def test_outcome_log_is_wal_flushes_on_close_and_reads_back(tmp_path):
    url = f"sqlite:///{tmp_path}/log/outcomes.sqlite"
    log = open_outcome_log(url)
    writers = [
        threading.Thread(target=lambda k=k: [log.write(OutcomeRecord(request_id=f"r{k}-{i}", attempts=[{"model": "a", "status": "ok"}],
                                                                    candidates=[{"model": "a", "p_good": 0.5}], stream=bool(i % 2)))
                                            for i in range(250)])
        for k in range(4)
    ]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    log.close()  # drains the queue: nothing accepted is lost
    with sqlite3.connect(tmp_path / "log" / "outcomes.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    df = read_outcomes(url)
    assert len(df) == 1000 and df.request_id.is_unique
    assert df.attempts.iloc[0] == [{"model": "a", "status": "ok"}] and df.stream.sum() == 500
    with pytest.raises(RuntimeError):
        log.write(OutcomeRecord(request_id="late"))


def test_a_lookup_never_waits_for_a_writer_stuck_behind_another_process(tmp_path):
    # Feedback asks the log whose request an id is; a backup or VACUUM holding the file's write
    # lock used to hold every such lookup (and its worker thread) until the queue drained.
    path = tmp_path / "outcomes.sqlite"
    log = OutcomeLog(open_store(f"sqlite:///{path}"), max_queued=3)
    log.write(OutcomeRecord(request_id="stored", chosen_model="m1"))
    log.flush()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        log.write(OutcomeRecord(request_id="queued", chosen_model="m2", attempts=[{"model": "m2", "status": "ok"}]))
        time.sleep(0.3)  # past the writer's 50 ms gathering: it is now stuck writing that batch
        found: dict = {}
        reader = threading.Thread(target=lambda: found.update(
            queued=log.get("queued"), stored=log.get("stored"), unknown=log.get("unknown")))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive()
        assert found["queued"]["chosen_model"] == "m2" and found["queued"]["attempts"] == [{"model": "m2", "status": "ok"}]
        assert found["stored"]["chosen_model"] == "m1" and found["unknown"] is None
        for i in range(6):  # the writer holds one batch; past 3 queued behind it, records are dropped, not hoarded
            log.write(OutcomeRecord(request_id=f"more-{i}"))
        assert log.dropped >= 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.close()
    assert read_outcomes(f"sqlite:///{path}").request_id.str.startswith("more-").sum() == 6 - log.dropped


def test_outcome_log_rejects_unknown_urls(tmp_path):
    with pytest.raises(ValueError, match="unsupported outcome log URL"):
        open_outcome_log("mysql://x/y")
    with pytest.raises(ValueError, match="names no file"):
        open_outcome_log("sqlite:///")


@pytest.mark.parametrize("storage", ["none", "hash", "full"])
def test_prompt_storage_modes(tmp_path, storage):
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "my secret question"}]}
    ctx = RequestContext(request_id="r1", body=body, routing=view_chat_request(body), headers={}, stream=False, profile="auto")
    ctx.embedding = np.ones(384, dtype=np.float32)
    ctx.decision = Decision("m1", (Candidate("m1", 0.9, 0.0, 10, 0.001, 1.0, 0.8), Candidate("m2", 0.5, 0.0, 10, 0.0001, 1.0, 0.4)),
                            "m1: best", knob=0.01, propensity=0.9)
    ctx.attempts = [{"model": "m0", "status": "skipped", "reason": "circuit_open"}, {"model": "m1", "status": "ok"}]
    ctx.answered_by, ctx.status = "m1", "ok"
    record = OutcomeHook(log=None, prompt_storage=storage, simulated=frozenset({"m1"})).record(ctx)
    assert record.propensity == 0.9 and record.chosen_model == "m1" and record.fallback_chain == ["m1"]
    assert record.simulated and record.features_hash and [c["model"] for c in record.candidates] == ["m1", "m2"]
    assert (record.prompt is not None) == (storage == "full")
    assert (record.prompt_hash is not None) == (storage != "none")
    assert (record.embedding is not None) == (storage != "none")
    if record.prompt:
        assert "my secret question" in record.prompt
    ctx.embedding = None  # a named-model request: no embedding, so only the text could be hashed
    bare = OutcomeHook(log=None, prompt_storage=storage, simulated=frozenset()).record(ctx)
    assert (bare.features_hash is None) == (storage == "none")  # `none`: not even a digest of the text


def test_a_request_the_full_record_cannot_take_still_gets_its_row_with_spend(tmp_path):
    # A lone surrogate past the JSON reader (as raw CESU-8 bytes once were) cannot be hashed: the
    # full record fails, and the row with what accounting needs is written all the same.
    body = {"messages": [{"role": "user", "content": "half \ud800 an emoji"}]}
    ctx = RequestContext(request_id="r-odd", body=body, routing=view_chat_request(body), headers={}, stream=True, profile="auto")
    ctx.answered_by, ctx.status, ctx.cost_usd = "m1", "ok", 0.0125
    ctx.extras["usage"] = {"prompt_tokens": 12, "completion_tokens": 30}
    url = f"sqlite:///{tmp_path}/o.sqlite"
    log = open_outcome_log(url)
    hook = OutcomeHook(log=log, prompt_storage="hash", simulated=frozenset({"m1"}))
    with pytest.raises(UnicodeEncodeError):
        hook.record(ctx)
    asyncio.run(hook.post(ctx))
    named = RequestContext(request_id="r-named", body=body, routing=view_chat_request(body), headers={}, stream=False, profile=None)
    named.requested_model, named.answered_by, named.status = "m2", "m2", "ok"
    asyncio.run(hook.post(named))
    log.close()
    rows = read_outcomes(url).set_index("request_id")
    row = rows.loc["r-odd"]
    assert (row.status, row.answered_model, row.cost_usd, bool(row.simulated)) == ("ok", "m1", 0.0125, True)
    assert (row.input_tokens, row.output_tokens) == (12, 30) and row.error == "outcome record incomplete: UnicodeEncodeError"
    # a named model's row names it as chosen, as the full record does; an answer not simulated is real spend
    assert (rows.loc["r-named"].chosen_model, bool(rows.loc["r-named"].simulated)) == ("m2", False)


def test_assembler_rebuilds_what_completion_to_chunks_split():
    completion = {
        "id": "c1", "object": "chat.completion", "created": 5, "model": "m", "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    chunks = completion_to_chunks(completion)
    assert not carries_output(chunks[0]) and carries_output(chunks[1])
    assert all(c["system_fingerprint"] == "fp_1" for c in chunks)  # a cached answer streamed as the upstream's was
    # every choice carries the logprobs key, null, as OpenAI's chunks do
    assert all(choice["logprobs"] is None for c in chunks for choice in c["choices"])
    assert all("logprobs" in choice for c in chunks for choice in c["choices"])
    asm = Assembler()
    for c in chunks:
        asm.add(c)
    assert asm.finished and asm.completion() == completion


def test_a_refusal_streams_and_reassembles_as_a_refusal():
    import openai.types.chat as types

    completion = {
        "id": "c2", "object": "chat.completion", "created": 5, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
    }
    chunks = completion_to_chunks(completion)  # how a cached refusal is streamed: it was an empty answer
    deltas = [types.ChatCompletionChunk.model_validate(c).choices[0].delta for c in chunks if c["choices"]]
    assert "".join(d.refusal or "" for d in deltas) == "I can't help with that."
    asm = Assembler()
    for c in chunks:
        asm.add(c)
    assert asm.completion() == completion


def test_outcome_log_upgrades_an_older_table_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE outcomes (request_id TEXT PRIMARY KEY, ts REAL, status TEXT)")
        conn.execute("INSERT INTO outcomes VALUES ('old-1', 1.0, 'ok')")
    log = open_outcome_log(f"sqlite:///{path}")
    log.write(OutcomeRecord(request_id="new-1", ts=2.0, chosen_model="m1"))
    log.close()
    df = read_outcomes(f"sqlite:///{path}")
    assert list(df.request_id) == ["old-1", "new-1"] and df.chosen_model.iloc[1] == "m1"


def test_json_text_replaces_lone_surrogates_and_calls_too_deep_invalid():
    from service import json_text

    assert json_text.loads(b'{"a": ["x \\ud83d y", {"\\udc00k": "\\ud83d\\ude00"}]}') == {"a": ["x \ufffd y", {"\ufffdk": "\U0001f600"}]}
    assert json_text.loads('"plain"') == "plain" and json_text.loads("[1, null]") == [1, None]
    # unescaped: an upstream's answer body as Java writes it (bytes), and a str already holding one
    assert json_text.loads(b'{"content": "x \xed\xa0\xbd y \xed\xa0\xbd\xed\xb8\x80"}') == {"content": "x \ufffd y \U0001f600"}
    assert json_text.loads('["a \ud800 b"]') == ["a \ufffd b"]
    deep = "[" * 900 + '"\\ud83d"' + "]" * 900  # json.loads takes it; replacing walks two frames a level
    with pytest.raises(ValueError):
        json_text.loads(deep)


def test_too_deep_does_not_depend_on_the_interpreters_recursion_limit():
    import sys

    from service import json_text

    deep = "[" * 300 + '"\\ud83d"' + "]" * 300
    limit = sys.getrecursionlimit()
    try:
        for raised in (limit, 5000):  # torch raises it to 3000 on import, for one
            sys.setrecursionlimit(raised)
            with pytest.raises(ValueError, match="nested too deeply"):
                json_text.loads(deep)
    finally:
        sys.setrecursionlimit(limit)
    assert json_text.loads("[" * 40 + '"\\ud83d"' + "]" * 40) is not None
