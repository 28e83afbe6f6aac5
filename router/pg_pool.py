"""The PostgreSQL connection pool every store opens: psycopg_pool's, which after a database
restart discards its idle connections as soon as one of them is found dead.

A pooled connection is not checked before use (that would be a round trip on every governed
request), so after a restart each idle connection would fail the next request that takes it, one
503 per connection the pool held. Instead, the first request to find its connection broken checks
the rest of the pool before it fails: the requests after it get fresh connections.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator


@functools.cache
def _pool_class() -> type:
    import psycopg
    from psycopg_pool import ConnectionPool

    class RestartAwarePool(ConnectionPool):
        @contextmanager
        def connection(self, timeout: float | None = None) -> Iterator[Any]:
            with super().connection(timeout) as conn:
                try:
                    yield conn
                except psycopg.OperationalError:
                    if conn.broken:
                        self.check()  # the idle connections the restart broke with this one
                    raise

    return RestartAwarePool


def connection_pool(url: str, **kwargs: Any) -> Any:
    """A psycopg_pool `ConnectionPool` on `url` (`kwargs` as ConnectionPool's)."""
    return _pool_class()(url, **kwargs)
