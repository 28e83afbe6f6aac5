"""A team or project budget set up before any key carries the team or project: accepted, and it
holds the keys created (or updated) with it later — through the running gateway, real HTTP and
the openai SDK. A key budget still needs its key."""
from __future__ import annotations

import openai
import pytest

from tests.governance_harness import client, new_key, settled


def _budget(admin, **fields):
    return admin.post("/admin/budgets", json={"period": "day", "limit_usd": 0.0019, **fields})


def _ask(secret, gw):
    # ~$0.001 an answer from m1 (100 output tokens at $10/M): one fits $0.0019, the next cannot be paid.
    return client(gw, secret).chat.completions.create(model="m1", messages=[{"role": "user", "content": "hello"}],
                                                      max_tokens=150)


def test_a_team_budget_made_before_its_keys_holds_a_key_created_later(env):
    gw, admin, *_ = env
    made = _budget(admin, scope="team", scope_id="growth")
    assert made.status_code == 201, made.text
    assert "no key has the team 'growth' yet" in made.json()["note"]
    assert [(b["scope"], b["scope_id"]) for b in admin.get("/admin/budgets").json()["data"]] == [("team", "growth")]

    _, secret = new_key(admin, name="growth-bot", team="growth")
    _ask(secret, gw)
    settled(admin, 1)
    with pytest.raises(openai.APIStatusError) as refused:
        _ask(secret, gw)
    assert refused.value.status_code == 402 and refused.value.body["code"] == "budget_exceeded"
    assert "day budget of team 'growth'" in refused.value.body["message"]
    report = admin.get("/admin/budgets").json()["data"][0]
    assert report["spent_usd"] > 0.0009

    # A key of another team is not held by it.
    _, other = new_key(admin, name="infra-bot", team="infra")
    _ask(other, gw)
    _ask(other, gw)


def test_a_project_budget_holds_a_key_given_the_project_afterwards(env):
    gw, admin, *_ = env
    key, secret = new_key(admin, name="later")
    assert _budget(admin, scope="project", scope_id="apollo").status_code == 201
    _ask(secret, gw)
    _ask(secret, gw)  # no project yet: not held
    settled(admin, 2)
    assert admin.patch(f"/admin/keys/{key['id']}", json={"project": "apollo"}).status_code == 200
    _ask(secret, gw)
    settled(admin, 3)
    with pytest.raises(openai.APIStatusError) as refused:
        _ask(secret, gw)
    assert refused.value.status_code == 402 and "day budget of project 'apollo'" in refused.value.body["message"]


def test_names_are_checked_as_keys_check_them_and_a_key_budget_still_needs_its_key(env):
    _, admin, *_ = env
    key, _ = new_key(admin, name="nightly", team="infra")
    made = _budget(admin, scope="team", scope_id="infra")
    assert made.status_code == 201 and "note" not in made.json()
    for scope_id in ("t\x00", ""):  # a key's team refuses the NUL too (PostgreSQL's text columns do)
        bad = _budget(admin, scope="team", scope_id=scope_id)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "scope_id", bad.text
    assert admin.post("/admin/keys", json={"name": "k2", "team": "t\x00"}).status_code == 400
    twice = _budget(admin, scope="team", scope_id="infra", limit_usd=5)
    assert twice.status_code == 409 and made.json()["id"] in twice.json()["error"]["message"]
    assert _budget(admin, scope="project", scope_id="nothing-yet").status_code == 201
    assert _budget(admin, scope="project", scope_id="nothing-yet").status_code == 409

    missing = _budget(admin, scope="key", scope_id="key_doesnotexist")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert missing.json()["error"]["param"] == "scope_id"
    by_name = _budget(admin, scope="key", scope_id="nightly")
    assert by_name.status_code == 404 and key["id"] in by_name.json()["error"]["message"]
    assert _budget(admin, scope="key", scope_id=key["id"]).status_code == 201
