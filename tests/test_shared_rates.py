"""A model's own RPM/TPM limit held across replicas sharing a Redis (a real one): each replica had
counted only its own calls, so two replicas sent twice the upstream's limit."""
from __future__ import annotations

import math

from router.config import Limits
from service.governance.redis_state import connect
from service.shared_rates import SharedRateWindow


def _replicas(redis_url, limits, clock):
    url, prefix = redis_url
    return [SharedRateWindow(connect(url), limits, prefix=prefix, refresh_s=0.0, clock=clock) for _ in range(2)]


def test_two_replicas_hold_one_models_rpm_together(redis_url):
    now = [600.0]  # the start of a minute
    limits = {"m1": Limits(rpm=4), "free": None}
    one, two = _replicas(redis_url, limits, lambda: now[0])
    admitted = [(one, two)[i % 2].add("m1", 10, limits=limits["m1"]) for i in range(8)]
    assert admitted == [True] * 4 + [False] * 4  # had been 8 of 8 over the two
    for replica in (one, two):  # each sees the other's calls when it decides
        assert not replica.has_room("m1", limits["m1"], 10)
        # the sliding minute the per-key limits use: into the next minute until the last one weighs 3 of 4
        assert replica.wait_s("m1", limits["m1"], 10) == 75.0
    now[0] += 61  # the next minute, where the last one still weighs 59/60: one request's room after 15 s more
    assert not one.has_room("m1", limits["m1"], 10)
    now[0] += 15
    assert one.has_room("m1", limits["m1"], 10) and two.add("m1", 10, limits=limits["m1"])
    # A model without limits is counted by each replica for itself (what /healthz shows).
    assert all(one.add("free", 5) for _ in range(20)) and one.usage("free") == (20, 100) and two.usage("free") == (0, 0)


def test_tokens_count_across_replicas_and_a_request_over_the_tpm_never_fits(redis_url):
    now = [1200.0]
    limits = {"m1": Limits(tpm=1000)}
    one, two = _replicas(redis_url, limits, lambda: now[0])
    assert one.add("m1", 600, limits=limits["m1"])
    two.add("m1", 300, request=False)  # output learnt after the call on the other replica
    assert not one.has_room("m1", limits["m1"], 200) and one.has_room("m1", limits["m1"], 100)
    assert not two.add("m1", 200, limits=limits["m1"])
    assert one.wait_s("m1", limits["m1"], 1001) == math.inf


def test_with_redis_away_each_replica_holds_the_limit_by_itself(redis_url):
    url, prefix = redis_url
    limits = {"m1": Limits(rpm=2)}
    replica = SharedRateWindow(connect("redis://127.0.0.1:1/0"), limits, prefix=prefix, refresh_s=0.0)
    assert [replica.add("m1", 1, limits=limits["m1"]) for _ in range(3)] == [True, True, False]
    assert not replica.has_room("m1", limits["m1"], 1) and replica.wait_s("m1", limits["m1"], 1) > 0


def test_two_gateways_on_one_redis_send_a_model_no_more_than_its_limit(redis_url, tmp_path):
    import openai
    import pytest

    from service.governance.runtime import Governance, GovernanceSettings
    from tests.fake_upstream import FakeUpstream
    from tests.gateway_harness import DEFAULT_QUALITY, MSG, QualityRouter, Running, fake_config

    url, prefix = redis_url
    master = "mk-shared-" + "5" * 24
    up = FakeUpstream().start()
    gws = []
    try:
        for i in range(2):
            config = fake_config(up.base_url, f"sqlite:///{tmp_path}/outcomes{i}.sqlite",
                                 models=[{"name": "m1", "limits": {"rpm": 2}}, {"name": "m2"}])
            gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov{i}.sqlite", master_key=master,
                                                        redis_url=url, redis_prefix=prefix))
            gws.append(Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov))
        clients = [openai.OpenAI(base_url=gw.base_url, api_key=master, max_retries=0) for gw in gws]
        for c in clients:
            assert c.chat.completions.create(model="m1", messages=MSG).model == "m1"
        for c in clients:  # the two replicas' calls together fill m1's minute
            with pytest.raises(openai.RateLimitError) as limited:
                c.chat.completions.create(model="m1", messages=MSG)
            # the sliding minute: past this minute's end, until the half of it that holds the two calls has gone
            assert 30 <= int(limited.value.response.headers["retry-after"]) <= 90
        assert len(up.requests_for("m1")) == 2
        assert clients[1].chat.completions.create(model="auto", messages=MSG).model == "m2"  # routed around it
    finally:
        for gw in gws:
            gw.stop()
        up.stop()


def test_a_call_refused_by_another_replicas_count_reads_the_wait_from_that_count(redis_url):
    """The copy that had shown room answered the wait: 0, and the 429 went out without a Retry-After."""
    now = [1800.0]
    limits = {"m1": Limits(rpm=2)}
    url, prefix = redis_url
    one, two = (SharedRateWindow(connect(url), limits, prefix=prefix, clock=lambda: now[0]) for _ in range(2))
    assert one.has_room("m1", limits["m1"], 10)  # its copy, read now, kept for refresh_s
    assert two.add("m1", 10, limits=limits["m1"]) and two.add("m1", 10, limits=limits["m1"])
    assert not one.add("m1", 10, limits=limits["m1"])
    assert one.wait_s("m1", limits["m1"], 10) > 0 and not one.has_room("m1", limits["m1"], 10)


def test_a_redis_refusing_writes_is_gone_without_as_one_away():
    from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

    from router.store_errors import store_refuses_writes
    from service.governance.redis_breaker import WhileAway

    # As redis-py raises them: READONLY and OOM as their own classes with the code cut from the
    # message, the others as ResponseError, inside a pipeline after "... of pipeline caused error: ".
    refusals = [ReadOnlyError("You can't write against a read only replica."),
                OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
                ResponseError("NOREPLICAS Not enough good replicas to write."),
                ResponseError("Command # 2 (HSET openclaw:cb:m1 rate_limited 0) of pipeline caused error: NOREPLICAS "
                              "Not enough good replicas to write."),
                ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist")]
    for refusal in refusals:  # each had been a 500, an answer already given among them
        assert store_refuses_writes(refusal)

        def write():
            raise refusal

        assert WhileAway(5.0, "counted locally")(write, "fallback") == "fallback"
    assert not store_refuses_writes(ResponseError("ERR wrong number of arguments for 'incrby' command"))
