"""Shadow mode: a candidate router decides (and here also calls its model) on every live
request without changing a byte of what the client gets; then the shadow report."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from argparse import Namespace

import httpx
import numpy as np
import pytest

from router.feedback_log import read_shadows
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import QualityRouter, Running, fake_config
from tests.conftest import require_dataset
from tests.routerbench_worlds import TABLE

# The live router's fixed qualities: it always prefers m1, where the shadow artifact (tests/conftest.py)
# prefers m2 on most requests.
LIVE = {"m1": 0.9, "m2": 0.6, "m3": 0.5}
EVERYDAY = ["Write a Python function that reverses a linked list.", "What is the capital of Australia?",
            "Solve for x: 3x + 7 = 22.", "Translate 'good morning' into French.", "Which planet is closest to the sun?",
            "Explain the difference between TCP and UDP.", "Is a tomato a fruit or a vegetable?",
            "The trophy does not fit in the suitcase because it is too big. What is too big?"]
PROMPTS = [f"Question {i}: which is larger, {i} squared or {i + 7} times two?" for i in range(16)]
ODD = "odd $x_$"  # a client's label that matplotlib would read as a (broken) formula

@pytest.fixture(autouse=True)
def _routerbench():
    require_dataset(TABLE)


def _shadows(db: str, n: int) -> list[dict]:
    """The shadow rows, once `n` are written (post-hooks run in the background)."""
    deadline = time.monotonic() + 20
    while len(read_shadows(db)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return read_shadows(db)


def _ask(client, text, stream):
    messages = [{"role": "user", "content": text}]
    if stream:
        chunks = list(client.chat.completions.create(model="auto", messages=messages, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[0].model, None
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    answer = raw.parse()
    return answer.choices[0].message.content, answer.model, raw.headers["x-request-id"]


def test_shadow_never_alters_responses_and_reports(shadow_artifact, tmp_path):
    from training import shadow_report

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 1.0, max_call_cost_usd: 10.0}}}}'
    with FakeUpstream() as up:
        plain = Running(fake_config(up.base_url, f"sqlite:///{tmp_path}/plain.sqlite"), router=QualityRouter(LIVE))
        shadowed = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter(LIVE))
        try:
            ids = []
            for i, text in enumerate(PROMPTS):
                stream = i % 3 == 0
                a, b = _ask(plain.client(), text, stream), _ask(shadowed.client(), text, stream)
                assert a[:2] == b[:2] == ("Hello from m1.", "m1")
                if b[2]:
                    ids.append(b[2])
                    r = httpx.post(f"{shadowed.url}/v1/feedback",
                                   json={"request_id": b[2], "score": float(i % 2), "label": "even" if i % 2 == 0 else ODD})
                    assert r.status_code == 200
            rows = _shadows(db, len(PROMPTS))
            shadow_calls = [r for r in up.requests if r.body.get("model") != "m1"]
        finally:
            plain.stop()
            shadowed.stop()

    assert len(rows) == len(PROMPTS)
    assert all(r["live_model"] == "m1" for r in rows)
    disagree = [r for r in rows if not r["agree"]]
    assert disagree, "the shadow artifact should prefer another model on some prompts"
    assert all(r["called"] and r["call_status"] == "ok" and r["call_cost_usd"] > 0 for r in disagree)
    assert not any(r["called"] for r in rows if r["agree"])
    assert len(shadow_calls) == len(disagree)  # the only upstream calls to other models were the shadow's
    for r in rows:
        assert set(r["shadow_candidate"]) >= {"p_good", "cost_usd", "latency_s"}

    out = tmp_path / "report"
    assert shadow_report.run(Namespace(db=db, out=str(out), seed=0)) == 0
    report = json.loads((out / "shadow_report.json").read_text())
    assert report["overall"]["requests"] == len(PROMPTS)
    assert report["overall"]["agreement"] == pytest.approx(1 - len(disagree) / len(PROMPTS))
    assert report["observed_shadow_calls"]["calls"] == len(disagree)
    assert set(report["by_task"]) == {"even", ODD, "unlabelled"}
    assert report["ope"]["n"] == len(ids)
    page = (out / "shadow_report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<h2>By task</h2>" in page


def test_shadow_report_names_a_log_that_is_missing_or_not_a_database(tmp_path, capsys):
    from service.cli import main

    not_a_db = tmp_path / "table.parquet"
    not_a_db.write_bytes(b"PAR1" + b"\x00" * 200)
    for db, says in [(f"sqlite:///{tmp_path}/typo/outcomes.sqlite", "no outcome log there"),
                     (f"sqlite:///{not_a_db}", "cannot open it as an SQLite database")]:
        assert main(["shadow-report", "--db", db, "--out", str(tmp_path / "report")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err


def test_shadow_report_without_any_feedback(shadow_artifact, tmp_path):
    from training import shadow_report

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}"}}}}'
    with FakeUpstream() as up:
        shadowed = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter(LIVE))
        try:
            for text in PROMPTS[:4]:
                _ask(shadowed.client(), text, False)
            _shadows(db, 4)
        finally:
            shadowed.stop()

    out = tmp_path / "report"
    assert shadow_report.run(Namespace(db=db, out=str(out), seed=0)) == 0
    report = json.loads((out / "shadow_report.json").read_text())
    assert report["overall"]["requests"] == 4
    assert "ope" not in report  # nothing to estimate from without rewards
    # A reader of the JSON sees that there is no verdict yet, not a "promote: false" that reads as keep.
    assert report["verdict"]["promote"] is False and report["verdict"]["headline"].startswith("No verdict yet")
    assert "No logged request with feedback" in (out / "shadow_report.html").read_text()


def test_a_failed_shadow_call_gives_its_reservation_back(shadow_artifact, tmp_path):
    from service.hooks.learning_hook import LearningHook
    from tests.fake_upstream import server_error

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 1.0, max_call_cost_usd: 10.0}}}}'
    with FakeUpstream() as up:
        for m in ("m2", "m3"):
            up.default(m, server_error())  # every shadow call fails
        running = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter(LIVE))
        try:
            for text in PROMPTS[:8]:
                _ask(running.client(), text, False)
            rows = _shadows(db, 8)
            runtime = next(h for h in running.gateway.pipeline.hooks if isinstance(h, LearningHook)).rt
            assert any(r["called"] and r["call_status"].startswith("error") for r in rows)
            assert runtime.shadow_spend == pytest.approx(0.0, abs=1e-12)  # nothing was spent, nothing stays reserved
        finally:
            running.stop()


def test_shadow_calls_stay_within_their_cap_however_long_the_answers(shadow_artifact, tmp_path):
    import concurrent.futures

    from service.hooks.learning_hook import LearningHook
    from tests.fake_upstream import ok

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    cap = 0.02  # about two answers of 3,750 tokens at $2 per million
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 1.0, max_call_cost_usd: {cap}}}}}'
    with FakeUpstream() as up:
        for m in ("m2", "m3"):
            up.default(m, ok("word " * 3000, delay_s=0.2))  # far longer than predicted, and in flight together
        running = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter(LIVE))
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda t: _ask(running.client(), t, False), PROMPTS))
            rows = _shadows(db, len(PROMPTS))
            runtime = next(h for h in running.gateway.pipeline.hooks if isinstance(h, LearningHook)).rt
        finally:
            running.stop()
    spent = sum(r["call_cost_usd"] or 0.0 for r in rows)
    assert any(r["called"] for r in rows) and spent <= cap  # it was $0.30 for a $0.01 cap
    assert runtime.shadow_spend == pytest.approx(spent)  # every reservation settled to the real cost


class _HeldUpstream(FakeUpstream):
    """A fake upstream whose delayed replies (`ok(delay_s=...)`, whatever the delay) wait until
    the test sets `released`: such a call is slow for as long as the test needs, however loaded
    the machine, and whatever the gateway did in the meantime happened while it was in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    async def _sleep(self, seconds: float) -> None:
        while seconds > 0 and not (self.released.is_set() or self._stopping.is_set()):
            await asyncio.sleep(0.01)


def test_a_slow_shadow_call_neither_queues_live_requests_nor_holds_back_their_outcome_rows(shadow_artifact, tmp_path):
    from service.hooks.learning_hook import LearningHook
    from tests.fake_upstream import ok

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 1.0, max_call_cost_usd: 10.0}}}}'
    with _HeldUpstream() as up:
        for m in ("m2", "m3"):
            up.default(m, ok(delay_s=1.0))  # the candidate's model answers only once released
        config = fake_config(up.base_url, db, extra=extra)
        # two connections to the provider: shared with shadow calls, live requests waited behind them
        config = config.model_copy(update={"providers": {"fake": config.providers["fake"].model_copy(
            update={"max_connections": 2, "timeout_s": 60.0})}})
        running = Running(config, router=QualityRouter(LIVE))
        # Were a live request (or its outcome row) to wait for the held shadow calls, it would
        # finish only after this release, and the checks below on `released` would fail.
        release = threading.Timer(30.0, up.released.set)
        release.start()
        runtime = next(h for h in running.gateway.pipeline.hooks if isinstance(h, LearningHook)).rt
        try:
            started, held = 0, []  # shadow calls started (none can finish), when each live request was sent
            for text in PROMPTS[:8]:
                held.append(started)
                reserved = runtime.shadow_spend
                _, model, rid = _ask(running.client(), text, False)
                assert not up.released.is_set(), "a live request waited for the shadow calls in flight"
                assert model == "m1"
                # the outcome row is there for feedback to any replica, not after the shadow call
                while running.gateway.outcome_log.get(rid) is None and not up.released.is_set():
                    time.sleep(0.02)
                assert not up.released.is_set(), "an outcome row waited for its shadow call"
                assert running.gateway.outcome_log.get(rid)["answered_model"] == "m1"
                # Before the next live request, this one's shadow is settled: its call started (the
                # cap reserved for it), or it agreed with the live router (no call, its row written).
                while runtime.shadow_spend == reserved and not up.released.is_set() \
                        and rid not in {r["request_id"] for r in runtime.feedback_log.shadows()}:
                    time.sleep(0.02)
                started += runtime.shadow_spend > reserved
            assert not up.released.is_set()
            # live requests went out with as many shadow calls in flight as the provider has connections
            assert max(held) >= 2, held
        finally:
            release.cancel()
            up.released.set()
            running.stop()


def test_the_shadow_router_decides_on_the_live_view_of_the_models(shadow_artifact, tmp_path):
    # The shadow artifact prefers m2 on most prompts; with m2's RPM window full the live router
    # cannot use it, and a shadow that ignored the models' state would "disagree" for nothing.
    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}"}}}}'
    models = [{"name": "m1", "context_window": 100000}, {"name": "m2", "context_window": 100000, "limits": {"rpm": 1}},
              {"name": "m3", "context_window": 100000}]
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, db, models=models, extra=extra), router=QualityRouter(LIVE))
        try:
            assert gw.gateway.live.started("m2", 10)  # m2's one request this minute
            gw.gateway.live.finished("m2")
            for text in PROMPTS:
                _ask(gw.client(), text, False)
            rows = _shadows(db, len(PROMPTS))
        finally:
            gw.stop()
    assert len(rows) == len(PROMPTS) and not any(r["shadow_model"] == "m2" for r in rows)


def _synthetic_shadows(n: int) -> list[dict]:
    """Shadow rows as read_shadows returns them: agreeing on the first half only."""
    cand = {"p_good": 0.7, "cost_usd": 0.001, "latency_s": 1.0}
    return [{"request_id": f"r{i}", "agree": i < n // 2, "live_model": "m1", "shadow_model": "m1" if i < n // 2 else "m2",
             "live_candidate": cand, "shadow_candidate": cand, "called": False, "call_status": None,
             "call_cost_usd": None, "call_latency_s": None} for i in range(n)]


def test_shadow_report_plots_each_rolling_mean_at_its_windows_last_request(monkeypatch):
    from training import shadow_report

    figures = []
    monkeypatch.setattr(shadow_report, "_png", lambda fig: figures.append(fig) or "")
    shadows = _synthetic_shadows(200)
    labels = {"r0": "tiny", **{f"r{i}": "big" for i in range(1, 200)}}
    shadow_report.plots(shadow_report.summarize(shadows, {}, labels), shadows)
    (timeline,) = [f for f in figures if f.axes[0].get_title() == "Agreement over time"]
    x, y = timeline.axes[0].get_lines()[0].get_data()
    assert (x[0], x[-1]) == (10, 200)  # windows of 10: the first mean is known at request 10
    assert y[x == 100][0] == pytest.approx(1.0) and y[x == 110][0] == pytest.approx(0.0)  # the switch at request 100 shows at 100, not at 90
    (by_task,) = [f for f in figures if f.axes[0].get_title() == "Agreement by task"]
    assert [t.get_text() for t in by_task.axes[0].get_yticklabels()] == ["big (199)", "tiny (1)"]


def test_shadow_report_page_gives_overlap_and_effective_sample_size():
    from training import shadow_report

    shadows = _synthetic_shadows(40)
    report = shadow_report.summarize(shadows, {}, {})
    est = {"value": -0.5, "lo": -0.6, "hi": -0.4, "n": 40, "ess": 7.5}
    report["ope"] = {"n": 40, "overlap": 0.5, **{m: {"difference": {"ips": est, "snips": est, "dr": est}}
                                                  for m in ("quality", "utility", "cost_usd")}}
    page = shadow_report.render_html(report, {})
    assert "agreement<b>50.0%</b>" in page
    assert "<th>effective n</th>" in page and "<td>7.5</td>" in page
    assert "on 50.0% of these 40 requests" in page
    assert "<th>Δ predicted P(good)</th>" in page and "predicted_delta_p_good" not in page
    assert '<td class="list">m1 20<br>m2 20</td>' in page


def _report(db: str, out) -> dict:
    from training import shadow_report

    assert shadow_report.run(Namespace(db=db, out=str(out), seed=0)) == 0
    return json.loads((out / "shadow_report.json").read_text())


def test_predicted_deltas_compare_choices_under_one_predictor_not_two_predictors(shadow_artifact, tmp_path):
    # The live router prefers m2, as the shadow artifact does on some prompts (the arithmetic
    # questions and everyday ones below differ enough for its choice to vary): they agree there,
    # yet the two predict m2 differently (latency from the catalog against the live measurements).
    # The headline deltas read that gap where the choice is the same; they must say what the
    # choice changes, 0 where it is alike.
    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}"}}}}'
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter({"m1": 0.6, "m2": 0.9, "m3": 0.5}))
        try:
            ids = [_ask(gw.client(), text, False)[2] for text in PROMPTS[:8] + EVERYDAY]
            rows = _shadows(db, len(ids))
            agree = {r["request_id"]: r["agree"] for r in rows}
            for rid in ids:
                label = "agreed" if agree[rid] else "disagreed"
                assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 1.0, "label": label}).status_code == 200
        finally:
            gw.stop()
    assert 0 < sum(agree.values()) < len(ids), "the routers should agree on some prompts, not all"
    report = _report(db, tmp_path / "report")

    mean = lambda values: float(np.mean(values))  # noqa: E731
    for k in ("p_good", "cost_usd", "latency_s"):
        assert report["by_task"]["agreed"][f"predicted_delta_{k}"] == 0.0  # same choice, nothing to gain or lose
        choice = mean([r["shadow_candidate"][k] - r["shadow_on_live_choice"][k] for r in rows])
        assert report["overall"][f"predicted_delta_{k}"] == pytest.approx(choice)
        assert report["by_live_model"]["m2"][f"predicted_delta_{k}"] == pytest.approx(choice)
        # the predictors' own gap is kept apart, on the same model (the live choice)
        gap = mean([r["shadow_on_live_choice"][k] - r["live_candidate"][k] for r in rows])
        assert report["overall"][f"predictor_gap_{k}"] == pytest.approx(gap)
    agreed_gap = mean([r["shadow_on_live_choice"]["latency_s"] - r["live_candidate"]["latency_s"] for r in rows if r["agree"]])
    assert report["by_task"]["agreed"]["predictor_gap_latency_s"] == pytest.approx(agreed_gap)
    assert abs(agreed_gap) > 0.5  # the predictors differ (what the old deltas showed as the choice's)
    page = (tmp_path / "report" / "shadow_report.html").read_text()
    assert "<th>latency s gap</th>" in page and "a difference of\npredictors, not of choices" in page


class _SlowRouter(QualityRouter):
    """A live router that takes `seconds` to decide: time the live request's handling has and its
    upstream call has not."""

    def __init__(self, quality, seconds: float):
        super().__init__(quality)
        self.seconds = seconds

    def route(self, request, **kwargs):
        time.sleep(self.seconds)
        return super().route(request, **kwargs)


def test_observed_latency_compares_upstream_calls_not_the_live_handling_time(shadow_artifact, tmp_path):
    from tests.fake_upstream import ok

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 1.0, max_call_cost_usd: 10.0}}}}'
    with FakeUpstream() as up:
        for m in ("m1", "m2", "m3"):
            up.default(m, ok(delay_s=0.2))  # every model equally fast
        gw = Running(fake_config(up.base_url, db, extra=extra), router=_SlowRouter(LIVE, 0.4))
        try:
            for i, text in enumerate(PROMPTS[:4]):
                _ask(gw.client(), text, stream=i % 2 == 0)
                _shadows(db, i + 1)  # one at a time: no shadow call waits behind the next routing
            rows = _shadows(db, 4)
        finally:
            gw.stop()
    called = [r for r in rows if r["called"] and r["call_status"] == "ok"]
    assert called
    calls = _report(db, tmp_path / "report")["observed_shadow_calls"]
    # equally fast models: about 0, where the handling time (0.4 s of routing besides) read -0.4 s
    assert abs(calls["delta_latency_s"]) < 0.15, calls
    assert calls["latency_compared"] == len(called)
    assert calls["live_gateway_time_s"] >= 0.35, calls
    page = (tmp_path / "report" / "shadow_report.html").read_text()
    assert "<th>Δ upstream latency s</th>" in page and "the live answer's upstream call" in page


def test_the_live_upstream_latency_is_the_answering_attempts():
    from training.shadow_report import upstream_latency

    attempts = [{"model": "m1", "status": "error", "latency_s": 1.0}, {"model": "m2", "status": "ok", "latency_s": 0.25}]
    assert upstream_latency("ok", "m2", attempts) == 0.25  # the fallback that answered, not the failed call
    assert upstream_latency("client_closed", "m2", attempts) is None  # cut short by the client
    assert upstream_latency("error", None, attempts) is None
    assert upstream_latency("ok", "m2", [{"model": "m2", "status": "ok"}]) is None  # not timed: left out


def test_a_shadow_row_names_the_model_that_answered_when_a_fallback_did(shadow_artifact, tmp_path):
    from tests.fake_upstream import server_error

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 0.0}}}}'
    with FakeUpstream() as up:
        up.default("m1", server_error())  # the live router's choice fails every time: m2, its fallback, answers
        gw = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter(LIVE))
        try:
            answers = [_ask(gw.client(), text, False) for text in PROMPTS[:4]]
            rows = _shadows(db, 4)
        finally:
            gw.stop()
    assert {model for _, model, _ in answers} == {"m2"}
    assert len(rows) == 4 and all(r["live_model"] == "m2" for r in rows)  # had been m1, which answered nothing
    assert all(r["agree"] == (r["shadow_model"] == "m2") for r in rows)
    # the live router's prediction for the model served; its own choice m1 until m1's failures open its circuit
    assert all(r["live_candidate"].get("model") == "m2" for r in rows)
    assert sorted(rows, key=lambda r: r["ts"])[0]["live_candidate"]["router_choice"] == "m1"
