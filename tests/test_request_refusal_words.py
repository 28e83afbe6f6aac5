"""What a malformed chat body is told, through the real `openai` SDK and raw HTTP against a running
gateway, on chat and `/v1/route` alike: an empty or null `model` is OpenAI's 400 (only a body
without the key gets the default profile), and a refused field is named in the client's terms,
never in the validation library's (its class names, "Extra inputs are not permitted")."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway_harness import MSG

JARGON = ("RouterOptions", "ResponseFormat", "Message", "Tool", "dictionary", "instance of", "Extra inputs")


def refused(gw, body):
    """Chat's and /v1/route's answers to one body: the same 400 from both, its error returned."""
    chat = httpx.post(f"{gw.url}/v1/chat/completions", json=body)
    routed = httpx.post(f"{gw.url}/v1/route", json=body)
    assert chat.status_code == routed.status_code == 400
    assert chat.json() == routed.json()
    error = chat.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("model", ["", None])
def test_an_empty_or_null_model_is_a_400_not_the_default_profile(start_gateway, upstream, model):
    gw = start_gateway()
    error = refused(gw, {"model": model, "messages": MSG})
    assert error["code"] == "invalid_value" and error["param"] == "model"
    assert "empty" in error["message"] and "'auto'" in error["message"]
    if model == "":
        with pytest.raises(openai.BadRequestError) as info:
            gw.client().chat.completions.create(model=model, messages=MSG)
        assert info.value.body == error
    assert not upstream.requests
    # The key left out is the documented default: router.default_profile.
    answered = httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": MSG})
    assert answered.status_code == 200 and answered.headers["x-router-profile"] == gw.config.router.default_profile
    assert httpx.post(f"{gw.url}/v1/route", json={"messages": MSG}).status_code == 200


@pytest.mark.parametrize("field, value, where, got", [
    ("router", "cheap", "router", "a string"),
    ("response_format", "json", "response_format", "a string"),
    ("messages", ["hi"], "messages[0]", "a string"),
    ("tools", [1], "tools[0]", "a number"),
    ("tools", [{"type": "function", "function": "f"}], "tools[0].function", "a string"),
])
def test_a_field_that_should_be_an_object_says_so(start_gateway, field, value, where, got):
    gw = start_gateway()
    error = refused(gw, {"model": "auto", "messages": MSG, field: value})
    assert error["message"] == f"invalid value for {where!r}: expected an object, got {got}"
    assert error["code"] == "invalid_value" and error["param"] == where
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="auto", messages=MSG, extra_body={field: value})
    assert info.value.body == error


def test_an_unknown_router_field_is_named_with_the_one_meant(start_gateway):
    gw = start_gateway()
    error = refused(gw, {"model": "auto", "messages": MSG, "router": {"max_cost": 0.01}})
    assert error["message"].startswith("'router.max_cost' is not a known field (did you mean max_cost_usd?); "
                                       "the fields of 'router' are max_cost_usd, max_latency_s,")
    assert error["code"] == "invalid_value" and error["param"] == "router.max_cost"
    assert not any(j in error["message"] for j in JARGON)
    # As the headers' own misspelling is told.
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="auto", messages=MSG, extra_headers={"x-router-max-cost-us": "0.01"})
    assert "(did you mean x-router-max-cost-usd?)" in info.value.body["message"]
    # Nothing close: the valid fields alone.
    error = refused(gw, {"model": "auto", "messages": MSG, "router": {"zzz": 1}})
    assert error["message"].startswith("'router.zzz' is not a known field; the fields of 'router' are")
