"""The post-hooks' runner: each post-hook runs whatever the one before it did, in reverse order."""
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from router.request_view import view_chat_request
from service.pipeline import Pipeline, RequestContext


class _Hook:
    def __init__(self, name: str, ran: list[str], fail: Exception | None = None):
        self.name, self.ran, self.fail = name, ran, fail

    async def pre(self, ctx):
        return None

    async def post(self, ctx):
        self.ran.append(self.name)
        if self.fail is not None:
            raise self.fail


def _ctx() -> RequestContext:
    return RequestContext(request_id="r1", body={}, routing=view_chat_request({}), headers={}, stream=False)


def _shutdown_error() -> RuntimeError:
    """What asyncio.to_thread raises once a forced exit has shut the loop's thread pool down."""
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    try:
        pool.submit(print)
    except RuntimeError as exc:
        return exc
    raise AssertionError("a shut-down pool accepted work")


def test_a_post_hook_cut_short_by_a_forced_shutdown_is_one_warning_and_the_others_still_run(caplog):
    ran: list[str] = []
    hooks = [_Hook("outcome", ran), _Hook("governance", ran, _shutdown_error())]
    with caplog.at_level(logging.WARNING, logger="service.pipeline"):
        asyncio.run(Pipeline(hooks).run_post(_ctx()))
    assert ran == ["governance", "outcome"]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "governance" in record.getMessage() and "forced shutdown" in record.getMessage()


def test_a_post_hook_that_fails_otherwise_is_logged_with_its_traceback(caplog):
    ran: list[str] = []
    hooks = [_Hook("outcome", ran), _Hook("cache", ran, RuntimeError("a bug"))]
    with caplog.at_level(logging.WARNING, logger="service.pipeline"):
        asyncio.run(Pipeline(hooks).run_post(_ctx()))
    assert ran == ["cache", "outcome"]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
