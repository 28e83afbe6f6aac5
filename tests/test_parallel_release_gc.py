"""A request's parallel slots come back when its context is collected without `finished` (a
response that never started), and that finalizer never stops the gateway: the garbage collector
runs it in whatever thread allocates, also one inside the limiter holding its lock. The collector
is made to run at nearly every allocation so that such a moment comes within seconds; a finalizer
that took the limiter's lock there would wait on its own thread for good."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import faulthandler, gc, sys, threading, time
from service.governance.hook import GovState, GovernanceHook
from service.governance.runtime import Governance, GovernanceSettings
from service.errors import ApiError
from service.pipeline import RequestContext
from tests.gateway_harness import fake_config

tmp, redis_url, prefix = sys.argv[1:4]
config = fake_config("http://127.0.0.1:9", f"sqlite:///{tmp}/outcomes.sqlite")
gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp}/gov.sqlite", master_key="mk-test-" + "9" * 24,
                                            redis_url=redis_url or None, redis_prefix=prefix))
hook = GovernanceHook(gov)
gov.keys.set_team_parallel("t", 10**9)
leaker, _ = gov.keys.create("leaker", max_parallel_requests=4, team="t")
busy, _ = gov.keys.create("busy", max_parallel_requests=10**9, team="t", rpm=10**9)
LIMIT = 4

def request(key):
    ctx = RequestContext("r", {}, None, {}, False)
    ctx.extras["governance"] = state = GovState(key, key.name)
    hook._hold_slots(ctx, state)
    return ctx

progress = [0, 0]
stop = threading.Event()

def admitter():  # requests that end as they should, and the key's RPM on the same limiter
    while not stop.is_set():
        hook.finished(request(busy))
        gov.limiter.admit(busy.id, busy.rpm, None, 1)
        progress[0] += 1

def leaked(deadline):  # a request in a reference cycle (a traceback's frame holds it) whose `finished` never ran
    while True:
        try:
            ctx = request(leaker)
        except ApiError:  # its earlier slots not yet collected (or, on Redis, not yet removed): they must come back
            if time.monotonic() > deadline:
                raise
            gc.collect()
            time.sleep(0.01)
            continue
        ctx.extras["cycle"] = ctx
        progress[1] += 1
        return

# A deadlock stops every thread that takes the lock, this one included: only C code can end it.
faulthandler.dump_traceback_later(60, exit=True)
gc.set_threshold(1, 1, 1)
threading.Thread(target=admitter, daemon=True).start()
# N of each, however long a slow machine takes (up to 30 s): a thread deadlocked on the lock stops its count short.
N = 200
end = time.monotonic() + 30
while min(progress) < N and time.monotonic() < end:
    leaked(time.monotonic() + 5)
stop.set()
assert min(progress) >= N, f"{progress} requests in 30 s: the limiter stopped"
gc.set_threshold(700, 10, 10)
gc.collect()
# Every leaked slot came back: the key's whole limit can be held again.
deadline = time.monotonic() + 5
while True:
    try:
        held = [request(leaker) for _ in range(LIMIT)]  # noqa: F841 (kept alive while the others are taken)
        break
    except ApiError:
        assert time.monotonic() < deadline, "the collected requests' slots did not come back"
        gc.collect()
        time.sleep(0.1)
print("OK", progress, flush=True)
"""


def _run(tmp_path: Path, *args: str) -> None:
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *args], cwd=ROOT, text=True,
                              capture_output=True, timeout=90, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the gateway's limiter hung: {exc.stdout}{exc.stderr}")
    assert done.returncode == 0 and done.stdout.startswith("OK"), done.stdout + done.stderr[-3000:]


def test_collected_requests_give_their_slots_back_without_deadlock(tmp_path):
    _run(tmp_path, "", "openclaw")


@pytest.mark.needs_services
def test_collected_requests_give_their_redis_slots_back_without_deadlock(tmp_path, redis_url):
    _run(tmp_path, *redis_url)
