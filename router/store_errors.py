"""What the stores say when they cannot start: a URL without its password, and the step an
operator is missing where a PostgreSQL error is a known one; and which errors mean a store is
away rather than refusing."""
from __future__ import annotations

import re
import sqlite3
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


def store_unreachable(exc: BaseException) -> bool:
    """A database or Redis not answering: a server restarting, a network cut, no pooled connection
    free within the pool's wait, an SQLite file locked past its busy timeout. Not a refusal, a
    misuse or a wrong password, which waiting does not mend. Looked up among the drivers imported,
    so none is imported for it."""
    if (psycopg := sys.modules.get("psycopg")) is not None and isinstance(exc, psycopg.OperationalError):
        # PoolTimeout is one. A query past a program limit (class 54: 1,700 columns) is one too,
        # and no wait mends it. InterfaceError ("the cursor is closed") is our misuse.
        return not (getattr(exc, "sqlstate", None) or "").startswith("54")
    if (redis := sys.modules.get("redis.exceptions")) is not None and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return not isinstance(exc, (redis.AuthenticationError, redis.AuthorizationError))  # subclasses of ConnectionError
    # SQLite's OperationalError also says a table is missing or the file is read-only: those stay.
    return isinstance(exc, sqlite3.OperationalError) and any(w in str(exc) for w in ("locked", "unable to open", "disk I/O"))


def store_refuses_writes(exc: BaseException) -> bool:
    """A store that refuses every write for its own state, not for the row: a revoked privilege, a
    read-only standby after a failover, a full disk. As with a store away, waiting (for an operator)
    mends it, and the rows must wait for it, not be dropped."""
    if (psycopg := sys.modules.get("psycopg")) is not None and isinstance(exc, psycopg.Error):
        state = getattr(exc, "sqlstate", None) or ""
        return state in ("42501", "25006") or state.startswith("53")  # insufficient privilege, read-only, resources
    if (redis := sys.modules.get("redis.exceptions")) is not None and isinstance(exc, redis.ResponseError):
        # A replica after a failover, memory full (redis-py raises these as their own classes, the
        # code cut from the message), too few replicas to write to, a failed save; inside a
        # pipeline the message begins "Command # N (...) of pipeline caused error: ".
        return isinstance(exc, (redis.ReadOnlyError, redis.OutOfMemoryError)) or re.search(
            r"(^|caused error: )(READONLY|NOREPLICAS|MISCONF|OOM)\b", str(exc)) is not None
    return isinstance(exc, sqlite3.OperationalError) and any(
        w in str(exc) for w in ("readonly database", "disk is full"))


def redact_url(url: str) -> str:
    """The URL without its password, for logs and errors: in its user part, in a `password=`
    query parameter (libpq takes it there too), and in a libpq key=value string
    ("host=db password=s3cret"), which the password had been printed from in full."""
    if "://" not in url:
        return re.sub(r"(\bpassword\s*=\s*)('[^']*'|\S+)", r"\1***", url)
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"


def setup_hint(exc: Exception, url: str) -> str:
    """A PostgreSQL set-up error in one line, with the missing step where it is a known one, and
    `url` redacted where libpq's message quotes it ('missing "=" after "postgresql+psycopg://u:pw@..."')."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.replace(url, redact_url(url))
    if getattr(exc, "sqlstate", None) == "3F000":  # invalid_schema_name: or the user lacks USAGE on it
        text += (" (the URL's search_path names a schema that does not exist, or that this user may not use: CREATE "
                 "SCHEMA it first, or GRANT USAGE ON SCHEMA to the user)")
    return text


@contextmanager
def setting_up(what: str, url: str, close: Callable[[], None]) -> Iterator[None]:
    """A PostgreSQL store's table set-up: an error there closes the store and becomes one line
    naming the store, its URL without the password and the missing step, not a traceback."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        close()
        raise ValueError(f"{what} {redact_url(url)}: cannot set up its tables: {setup_hint(exc, url)}") from None
