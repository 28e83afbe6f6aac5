"""A governance database that stops answering while the gateway runs: requests that need it get a
503 to retry, soon, not a 500 half a minute later (real PostgreSQL behind a TCP relay the test cuts,
the real openai SDK)."""
from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from service.governance.runtime import Governance, GovernanceSettings
from tests.fake_upstream import FakeUpstream, ok
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config
from tests.governance_harness import MASTER, MODELS, client, new_key


class Relay:
    """Forwards 127.0.0.1:<port> to a server; `cut()` closes the listener and every connection, as a
    database host that drops off the network does."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            self.sockets += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        # shutdown, not close alone: a listener closed under a blocked accept() goes on accepting.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_a_governance_database_that_stops_answering_gets_a_503_to_retry(pg_url, tmp_path):
    target = urlsplit(pg_url)
    relay = Relay(target.hostname, target.port or 5432)
    relayed = pg_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{relay.port}", 1)
    up = FakeUpstream().start()
    up.default("m3", ok("fine"))
    config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=MODELS)
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY),
                 governance=Governance(config, GovernanceSettings(db_url=relayed, master_key=MASTER)))
    try:
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10) as admin:
            _, used = new_key(admin, name="used")
            _, fresh = new_key(admin, name="fresh")  # its first request must look it up in the database
        ask = {"model": "m3", "messages": [{"role": "user", "content": "hi"}]}
        assert client(gw, used).chat.completions.create(**ask).choices[0].message.content == "fine"
        relay.cut()
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as away:
            client(gw, fresh).with_options(max_retries=0, timeout=60).chat.completions.create(**ask)
        # It had been a 500 internal_error after psycopg_pool's 30 s wait.
        assert away.value.status_code == 503 and away.value.body["code"] == "store_unavailable"
        assert away.value.response.headers["retry-after"] == "5"
        assert time.monotonic() - started < 25
    finally:
        gw.stop()
        up.stop()


def test_only_a_store_that_is_away_is_a_503_not_a_misuse_or_a_wrong_password():
    import sqlite3

    import psycopg
    import redis.exceptions

    from service.errors import internal_error

    away = [psycopg.OperationalError("server closed the connection unexpectedly"), redis.exceptions.ConnectionError("refused"),
            redis.exceptions.TimeoutError("timed out"), sqlite3.OperationalError("database is locked")]
    # Waiting mends none of these: a retry every 5 s would hide a bug or a configuration error.
    ours = [psycopg.InterfaceError("the cursor is closed"), redis.exceptions.AuthenticationError("invalid password"),
            sqlite3.OperationalError("no such table: gov_spend"), ValueError("a bug")]
    assert [internal_error(e).status for e in away] == [503] * len(away)
    assert [internal_error(e).status for e in ours] == [500] * len(ours)
