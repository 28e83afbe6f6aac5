"""Run an ASGI app on a real 127.0.0.1 socket in a background thread.

Used by the simulated upstream when `serve` starts it beside the gateway, and by the fake
upstream servers of the tests. The socket is bound before the thread starts, so port 0 gets
a free port and the URL is known at once; `stop()` is idempotent and waits for the thread.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Callable

import uvicorn


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> tuple[str, Callable[[], None]]:
    """Start `app`; return (`http://host:port`, stop)."""
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that name it, and
    # without it Nagle's algorithm adds ~40 ms to each response on a reused connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound_host, bound_port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(app, interface="asgi3", log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    )
    failed: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced to the starting thread below
            failed.append(exc)

    thread = threading.Thread(target=target, name=f"asgi-{bound_port}", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.01)
    if failed or not server.started:
        sock.close()
        raise RuntimeError(f"server on {bound_host}:{bound_port} failed to start: {failed[:1]}")

    def stop() -> None:
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()

    return f"http://{bound_host}:{bound_port}", stop
