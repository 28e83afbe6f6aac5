"""A client that leaves after the upstream stream opened but before the response began: Starlette
cancels the response before its body is read (here while sending its start waits on a paused
write), so the stream's own ending never ran. The request must still end: the upstream stream
closed, the request out of flight, logged `client_closed`."""
from __future__ import annotations

import asyncio
import json
import time

from service.app import create_app
from tests.fake_upstream import FakeUpstream, stall_stream
from tests.gateway_harness import fake_config


def _scope(body: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


def test_a_client_gone_before_the_response_began_still_ends_its_request(tmp_path):
    with FakeUpstream() as up:
        # The upstream sends its first words, then nothing for a minute: only a closed stream ends
        # the request within the wait below.
        up.default("m1", stall_stream(after_chunks=2, seconds=60))
        app = create_app(fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite"), load_artifact=False)
        gw = app.state.gateway
        body = json.dumps({"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
        sent: list[dict] = []

        async def call() -> list[dict]:
            given = 0

            async def receive() -> dict:
                nonlocal given
                given += 1
                if given == 1:
                    return {"type": "http.request", "body": body, "more_body": False}
                if given == 2:  # the gateway's own watch while it waits for the upstream: the client is still there
                    await asyncio.Event().wait()
                # Starlette listens for a disconnect beside sending the response: the client left
                # after the upstream stream opened, before the response began.
                return {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    # uvicorn waits here while the connection's writes are paused (its buffer is
                    # full), until the disconnect cancels the response before its body is ever read.
                    await asyncio.Event().wait()
                sent.append(message)

            await asyncio.wait_for(app(_scope(body), receive, send), 10)
            # The stream's ending runs the post-hooks in the background: let them write. A request
            # still reading its upstream stays in flight past this wait, a third of the stall.
            deadline = time.monotonic() + 20
            while (gw.in_flight or gw.tasks) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            rows = gw.outcome_log.read()
            await gw.aclose()
            return rows

        rows = asyncio.run(call())
        in_flight = set(gw.in_flight)

    assert not in_flight
    assert not any(m["type"] == "http.response.body" and m.get("body") for m in sent)  # the client got no answer
    assert len(rows) == 1 and rows[0]["status"] == "client_closed", rows
    assert [a["model"] for a in rows[0]["attempts"]] == ["m1"]  # its prompt is billed on the model it was sent to
