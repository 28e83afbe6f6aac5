"""Files and audio sent inline (OpenAI's `file` and `input_audio` parts, forwarded as sent) count
against a key's ceiling, budgets and TPM: real gateway with governance, real fake upstream (which
bills every character of the messages, base64 included, at four a token), the real openai SDK."""
from __future__ import annotations

import base64
import logging
import os

import openai
import pytest

from tests.governance_harness import chat, client, new_key, settled


def pdf_part(size: int) -> dict:
    data = base64.b64encode(os.urandom(size)).decode()
    return {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64," + data}}


def ask(c: openai.OpenAI, model: str, *parts: dict):
    return c.chat.completions.with_raw_response.create(model=model, max_tokens=200, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Summarise this document."}, *parts]}])


def spent(admin) -> float:
    return sum(b["spent_usd"] for b in admin.get("/admin/budgets").json()["data"])


def test_a_large_inline_pdf_is_refused_by_the_keys_ceiling_before_any_upstream_call(env):
    gw, admin, _, upstream, _ = env
    key, secret = new_key(admin, name="capped", max_request_usd=0.005, tpm=20000)
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "total", "limit_usd": 0.01})
    pdf = pdf_part(600_000)  # the upstream would bill ~200,000 prompt tokens: $0.2 on m3, 40x the ceiling
    for model in ("m3", "auto"):
        with pytest.raises(openai.APIStatusError) as refused:
            ask(client(gw, secret), model, pdf)
        assert refused.value.status_code == 402 and refused.value.body["code"] == "request_cost_ceiling", model
        assert "600,000 bytes of attached files" in refused.value.body["message"]
    assert not any(upstream.requests_for(m) for m in ("m1", "m2", "m3"))
    settled(admin, 2)
    assert spent(admin) == 0


def test_without_a_ceiling_a_budget_refuses_what_an_inline_pdf_could_cost(env):
    gw, admin, _, upstream, _ = env
    key, secret = new_key(admin, name="budgeted")
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "total", "limit_usd": 0.01})
    pdf = pdf_part(60_000)  # billed ~20,000 prompt tokens: $0.02 on m3, twice the budget
    for model in ("m3", "auto"):
        with pytest.raises(openai.APIStatusError) as refused:
            ask(client(gw, secret), model, pdf)
        assert refused.value.status_code == 402 and refused.value.body["code"] == "budget_exceeded", model
    assert not any(upstream.requests_for(m) for m in ("m1", "m2", "m3"))
    assert spent(admin) == 0


def test_a_small_inline_pdf_is_routed_answered_and_settles_within_its_reservation(env):
    gw, admin, gov, upstream, _ = env
    key, secret = new_key(admin, name="reader", max_request_usd=0.05, tpm=20000)
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "month", "limit_usd": 1.0})
    pdf = pdf_part(2_000)
    answer = ask(client(gw, secret), "auto", pdf)
    assert answer.http_response.status_code == 200
    model = answer.parse().model
    assert upstream.requests_for(model)[-1].body["messages"][0]["content"][1] == pdf  # forwarded as sent
    settled(admin, 1)
    with gov.db.tx() as tx:
        row = tx.one("SELECT cost_nusd, reserved_nusd, input_tokens FROM gov_spend WHERE status = 'ok'")
    assert row["input_tokens"] > 600  # the upstream billed the file
    assert row["reserved_nusd"] >= row["cost_nusd"] > 0


def test_tpm_counts_the_prompt_tokens_the_upstream_billed(env):
    gw, admin, *_ = env
    _, secret = new_key(admin, name="paced", tpm=5000)
    c = client(gw, secret)
    first = ask(c, "m3", pdf_part(30_000))  # a few words by the estimate, ~10,000 prompt tokens billed
    assert first.parse().usage.prompt_tokens > 5000
    settled(admin, 1)
    with pytest.raises(openai.APIStatusError) as refused:
        chat(c, model="m3")
    assert refused.value.status_code == 429 and refused.value.body["code"] == "tpm_limit_exceeded"


def test_a_file_id_is_refused_for_a_key_with_limits_and_forwarded_for_one_without(env):
    gw, admin, _, upstream, _ = env
    by_id = {"type": "file", "file": {"file_id": "file-6F2ksmvXxt4VdoqmHRw6kL"}}
    limited, limited_secret = new_key(admin, name="limited")
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": limited["id"], "period": "day", "limit_usd": 5.0})
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client(gw, limited_secret), "m3", by_id)
    assert refused.value.status_code == 403 and refused.value.body["code"] == "unsized_attachment"
    assert "file_id" in refused.value.body["message"] and "'limited'" in refused.value.body["message"]
    assert not upstream.requests_for("m3")
    _, free_secret = new_key(admin, name="unlimited")
    assert ask(client(gw, free_secret), "m3", by_id).http_response.status_code == 200
    assert upstream.requests_for("m3")[-1].body["messages"][0]["content"][1] == by_id


def test_a_settled_cost_above_the_requests_maximum_is_logged_with_the_key_and_amounts(env, caplog):
    caplog.set_level(logging.WARNING, logger="service.governance.hook")
    gw, admin, *_ = env
    key, secret = new_key(admin, name="listener")
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "month", "limit_usd": 1.0})
    # 48,000 bytes of audio count as at most 3,000 tokens; this upstream bills their base64 as
    # text, ~16,000 tokens: more than the request's maximum.
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(os.urandom(48_000)).decode(), "format": "wav"}}
    assert ask(client(gw, secret), "m3", audio).http_response.status_code == 200
    row = settled(admin, 1)[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "above its maximum" in r.getMessage()]
    assert len(warnings) == 1
    assert f"key 'listener' ({key['id']})" in warnings[0]
    assert f"settled at ${row['cost_usd']:.9f}".rstrip("0") in warnings[0] and f"{row['input_tokens']} prompt tokens" in warnings[0]


def test_a_routed_request_with_a_file_goes_to_a_model_its_worst_case_fits(env):
    # Worst case of a 10 KB PDF: 10,000 tokens, $0.10 on m1, $0.05 on m2, $0.01 on m3. The router
    # prices it into every candidate, so a key's ceiling or budget picks m3 instead of refusing.
    gw, admin, _, upstream, _ = env
    _, capped = new_key(admin, name="capped", max_request_usd=0.05)
    key, budgeted = new_key(admin, name="budgeted")
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "total", "limit_usd": 0.05})
    pdf = pdf_part(10_000)
    for secret in (capped, budgeted):
        assert ask(client(gw, secret), "auto", pdf).parse().model == "m3"
    assert len(upstream.requests_for("m3")) == 2 and not upstream.requests_for("m1")
    route = admin.post("/v1/route", json={"model": "auto", "max_tokens": 200, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Summarise this document."}, pdf]}]}).json()
    costs = {c["model"]: c["cost_usd"] for c in route["candidates"]}
    assert costs["m1"] - costs["m3"] > 0.085  # the file alone: $0.10 against $0.01
