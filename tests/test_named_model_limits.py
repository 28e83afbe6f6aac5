"""A model named by the client under the request's own limits (`local_only`, allowed or excluded
models, a cost cap): refused when they rule it out, never called, through the real openai SDK."""
from __future__ import annotations

import openai
import pytest

from tests.gateway_harness import MSG
from tests.test_gateway_failover import WITH_FALLBACKS


def test_a_named_model_outside_the_requests_own_limits_is_refused_not_called(start_gateway, upstream):
    # Was a 200 from m2: the prompt left the machine under local_only, and nothing said so.
    gw = start_gateway(models=WITH_FALLBACKS)
    for limits, why in (({"local_only": True}, "lacks the tag(s) local"),
                        ({"excluded_models": ["m2"]}, "allowed_models or excluded_models leave it out"),
                        ({"allowed_models": ["m1"]}, "allowed_models or excluded_models leave it out"),
                        ({"max_cost_usd": 1e-12}, "its prompt alone costs more than the request's max_cost_usd")):
        with pytest.raises(openai.BadRequestError) as refused:
            gw.client().chat.completions.create(model="m2", messages=MSG, extra_body={"router": limits})
        assert refused.value.body["code"] == "model_not_allowed" and why in refused.value.body["message"], limits
    with pytest.raises(openai.BadRequestError):
        gw.client().chat.completions.create(model="m2", messages=MSG, extra_headers={"x-router-local-only": "true"})
    assert not upstream.requests_for("m2")
    assert gw.outcomes()[-1]["status"] == "error"  # refused, and still logged
    assert gw.client().chat.completions.create(model="m1", messages=MSG, extra_body={"router": {"local_only": True}}).model == "m1"
