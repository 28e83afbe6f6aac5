"""Budgets through the running gateway: reservations before the spend, the soft threshold,
request and session ceilings, what a reservation covers — real HTTP, the real openai SDK."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import httpx
import openai
import pytest

from service.governance.runtime import Governance, GovernanceSettings
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config
from tests.fake_upstream import not_found, server_error
from tests.governance_harness import MASTER, MODELS, chat, client, new_key, settled, wait_for


def test_soft_threshold_reroutes_cheaper_then_budget_refuses(env):
    gw, admin, *_ = env
    key, secret = new_key(admin, name="team-bot", team="growth")
    # m1 answers cost ~$0.001 each, m3 answers ~$0.0001: the soft threshold at 50 % of $0.003
    # must move traffic to the cheap model well before the hard limit.
    budget = admin.post("/admin/budgets", json={"scope": "team", "scope_id": "growth", "period": "month",
                                                "limit_usd": 0.003, "soft_threshold": 0.5}).json()
    c = client(gw, secret)
    models, headers = [], []
    refusal = None
    for _ in range(60):
        try:
            resp = chat(c)
        except openai.APIStatusError as exc:
            refusal = exc
            break
        models.append(resp.parse().model)
        headers.append(resp.headers.get("x-router-budget"))
        settled(admin, len(models))
    assert refusal is not None, "the budget never refused"
    assert refusal.status_code == 402
    assert refusal.body["code"] == "budget_exceeded"
    assert "month budget of team 'growth'" in refusal.body["message"]
    first_cheap = models.index("m3")
    assert models[:first_cheap] and set(models[:first_cheap]) == {"m1"}
    assert set(models[first_cheap:]) == {"m3"} and len(models[first_cheap:]) >= 3
    assert headers[first_cheap] and "soft-limit" in headers[first_cheap]
    report = wait_for(lambda: next(b for b in admin.get("/admin/budgets").json()["data"] if b["id"] == budget["id"]))
    assert report["spent_usd"] <= 0.003 + 0.0025  # at most one request's maximum over the limit
    assert report["soft_limit_reached"]
    spend = admin.get("/admin/spend", params={"group_by": "team,model"}).json()["data"]
    assert {(r["team"], r["model"]) for r in spend if r["cost_usd"] > 0} == {("growth", "m1"), ("growth", "m3")}


def test_a_request_for_n_answers_reserves_n_answers(env):
    gw, admin, *_ = env
    key, secret = new_key(admin, name="n")
    # m1: $10 per 1M output tokens, so chat()'s 200 tokens cost at most $0.002; 20 answers $0.04
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 0.02})
    assert chat(client(gw, secret), model="m1").http_response.status_code == 200
    with pytest.raises(openai.APIStatusError) as refused:
        chat(client(gw, secret), model="m1", n=20)
    assert refused.value.status_code == 402 and refused.value.body["code"] == "budget_exceeded"


def test_budget_too_small_for_any_model_names_the_budget(env):
    gw, admin, *_ = env
    key, secret = new_key(admin, name="tiny")
    # Less than even m3's predicted ~$0.00005: the router's cost cap excludes every model.
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 0.00002})
    with pytest.raises(openai.APIStatusError) as refused:
        chat(client(gw, secret))
    assert refused.value.status_code == 402 and refused.value.body["code"] == "budget_exceeded"
    assert f"day budget of key 'tiny' ({key['id']})" in refused.value.body["message"]


def test_a_ceiling_below_every_models_cost_is_the_same_402_on_auto_as_on_a_named_model(env):
    gw, admin, *_ = env
    _, secret = new_key(admin, name="penny", max_request_usd=0.00002)  # under even m3's predicted ~$0.00005
    for model in ("auto", "m3"):
        with pytest.raises(openai.APIStatusError) as refused:
            client(gw, secret).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 402 and refused.value.body["code"] == "request_cost_ceiling", model
        assert "ceiling of $0.00002 of key 'penny'" in refused.value.body["message"]  # not rounded to $0.0000


def test_a_profiles_own_cost_cap_is_not_blamed_on_the_keys_ceiling(upstream, tmp_path):
    # The profile caps cost below every model; the key's ceiling is far above: the 400 stays the router's.
    extra = "router: {profiles: {auto: {willingness_to_pay: 0.01, max_cost_usd: 0.00002}}}"
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=MODELS, extra=extra)
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/g.sqlite", master_key=MASTER))
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    try:
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
            _, secret = new_key(admin, name="roomy", max_request_usd=0.01)
        with pytest.raises(openai.APIStatusError) as refused:
            client(gw, secret).chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 400 and refused.value.body["code"] == "no_eligible_model"
    finally:
        gw.stop()


def test_request_and_session_ceilings(env):
    gw, admin, *_ = env
    _, secret = new_key(admin, name="agent", max_request_usd=0.0015, max_session_usd=0.0025)
    c = client(gw, secret)
    # Named m1 with room for 400 output tokens may cost more than the per-request ceiling.
    with pytest.raises(openai.APIStatusError) as ceiling:
        c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=400)
    assert ceiling.value.status_code == 402 and ceiling.value.body["code"] == "request_cost_ceiling"

    answered = 0
    with pytest.raises(openai.APIStatusError) as session:
        for _ in range(20):
            chat(c, extra_body={"prompt_cache_key": "session-A"})
            answered += 1
            settled(admin, answered)
    assert session.value.status_code == 402 and "session cost ceiling" in session.value.body["message"]
    assert answered >= 2
    # Another session of the same key starts fresh; the header works like prompt_cache_key.
    assert chat(c, extra_headers={"x-session-id": "session-B"}).http_response.status_code == 200


def test_a_named_model_checked_against_the_ceiling_on_its_maximum_is_sent_that_maximum(env):
    gw, admin, _, upstream, _ = env
    _, secret = new_key(admin, name="capped", max_request_usd=0.01)  # no budget: only the ceiling
    client(gw, secret).chat.completions.create(model="m3", messages=[{"role": "user", "content": "write a lot"}])
    # m3's worst case (4,096 output tokens at $1/M) passed the $0.01 ceiling; without the cap sent,
    # the upstream could have written 60,000 tokens and billed six times the ceiling.
    assert upstream.requests_for("m3")[-1].body["max_tokens"] == 4096


def test_a_routed_request_reserves_for_its_model_and_max_fallbacks_more():
    # The ranking is the whole failover chain (rate-limited models do not use up max_fallbacks),
    # but reserving every ranked model's worst case would tie a budget up many times over: the
    # reservation covers the chosen model and max_fallbacks (3) more, and a dearer model past them
    # is left out of the chain.
    from types import SimpleNamespace

    from router.types import Candidate, Decision, RoutingRequest
    from service.dispatch import failover_chain
    from service.governance.hook import GovernanceHook
    from service.governance.keys import to_nusd
    from service.pipeline import RequestContext

    prices = {"m1": 1.0, "m2": 2.0, "m3": 1.0, "m4": 1.0, "m5": 100.0, "m6": 1.5}
    config = fake_config("http://127.0.0.1:9/v1", "sqlite:///unused.sqlite",
                         models=[{"name": m, "in": p, "out": p, "context_window": 100000} for m, p in prices.items()])
    hook = GovernanceHook.__new__(GovernanceHook)
    hook.gov = SimpleNamespace(config=config)
    decision = Decision("m1", tuple(Candidate(m, 0.9 - i / 100, 0.01, 100, 0.001, 1.0, 1 - i / 10) for i, m in enumerate(prices)),
                        "best utility", 1.0)
    ctx = RequestContext("r1", {"messages": [{"role": "user", "content": "hi"}]},
                         RoutingRequest(text="hi", input_tokens=1000, max_output_tokens=500), {}, False, decision=decision)
    assert failover_chain(config, ctx) == list(prices)
    _, maximum = hook.estimate(ctx)
    spec = {m.name: m for m in config.models}
    assert maximum == to_nusd(hook.most(ctx, spec["m2"]))  # the dearest of m1-m4
    assert failover_chain(config, ctx) == ["m1", "m2", "m3", "m4", "m6"]  # m5 is past them and dearer


def test_under_a_budget_a_request_without_an_output_limit_is_sent_the_one_it_was_reserved_for(env):
    # The reservation counts each model's max_output_tokens (4,096 by default); an upstream told no
    # limit may write more, and the budget would end far past "limit + one request's maximum".
    gw, admin, gov, up, _ = env
    key, secret = new_key(admin, name="capped")
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 5})
    c = client(gw, secret)
    c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Write a long essay."}])
    assert up.requests[-1].body["max_tokens"] == 4096
    c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Write a short essay."}], max_tokens=50)
    assert up.requests[-1].body["max_tokens"] == 50
    _, free = new_key(admin, name="no-budget")  # no budget: nothing to bound, the client's body as sent
    client(gw, free).chat.completions.create(model="auto", messages=[{"role": "user", "content": "Write a long essay."}])
    assert "max_tokens" not in up.requests[-1].body


@contextmanager
def _governed(upstream, tmp_path, models: list[dict], m3) -> Iterator[Running]:
    """A gateway with governance over `upstream`, whose m3 answers `m3` to every call."""
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=models)
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/g.sqlite", master_key=MASTER))
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    upstream.reset()
    upstream.default("m3", m3)
    try:
        yield gw
    finally:
        gw.stop()
        upstream.reset()


def test_a_named_models_fallback_predicted_above_the_budgets_room_is_not_called(upstream, tmp_path):
    # Naming m1 is refused under this budget; naming m3, whose fallback is m1, reached m1 all the
    # same when m3 failed: a key could be billed what naming the dearer model is refused for.
    models = [{**m, "fallbacks": ["m1"]} if m["name"] == "m3" else m for m in MODELS]
    with _governed(upstream, tmp_path, models, m3=server_error()) as gw:
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
            key, secret = new_key(admin, name="small")
            # 400 output tokens: m3 at $1/M is predicted ~$0.0004, m1 at $10/M ~$0.004
            admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 0.002})
        ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}
        with pytest.raises(openai.APIStatusError) as named_dear:
            client(gw, secret).chat.completions.create(model="m1", **ask)
        assert named_dear.value.status_code == 402 and named_dear.value.body["code"] == "budget_exceeded"
        with pytest.raises(openai.APIStatusError) as failed:
            client(gw, secret).chat.completions.create(model="m3", **ask)
        assert failed.value.status_code == 502
        assert upstream.requests_for("m3") and not upstream.requests_for("m1")


def test_a_budget_that_only_a_model_unknown_upstream_fits_is_a_402_not_a_503(upstream, tmp_path):
    # m3 alone fits what is left, and its upstream answers 404 model_not_found: its circuit open,
    # the request had got a 503 with retry-after: 1 (OpenClaw's "overloaded") for as long as the
    # name stayed wrong, instead of the budget's 402.
    with _governed(upstream, tmp_path, MODELS, m3=not_found()) as gw:
        ask = {"messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
            key, secret = new_key(admin, name="small")
            for _ in range(3):  # the breaker's 3 failures, before the budget (naming m3 is dearer than routing)
                with pytest.raises(openai.NotFoundError):
                    client(gw, secret).chat.completions.create(model="m3", extra_body={"fallbacks": []}, **ask)
            # predicted: m1 ~$0.0005, m2 ~$0.00025, m3 ~$0.00005: m3 alone fits
            admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 0.0001})
        with pytest.raises(openai.APIStatusError) as refused:
            client(gw, secret).chat.completions.create(model="auto", **ask)
        assert refused.value.status_code == 402 and refused.value.body["code"] == "budget_exceeded", refused.value.body
