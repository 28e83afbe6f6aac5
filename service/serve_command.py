"""`openclaw-router serve`: run the OpenAI-compatible routing gateway.

Without `--config` it uses the real providers whose API keys are in the environment
(service/presets.py); with no key at all it serves the embedded demo: the catalog of
service/default_config.yaml, answered by the built-in simulator (a real local HTTP server
started beside the gateway), every simulated model labelled as such in /v1/models, /healthz
and the outcome log. A config file names providers and keys' env vars explicitly.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("openclaw.serve")


def default_config_path() -> Path:
    return Path(__file__).resolve().parent / "default_config.yaml"


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535)")
    return port


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="interface to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=None, help="port (default: server.port, 8080; 0 picks a free one)")
    parser.add_argument("--config", default=None, help="catalog/config YAML (default: providers whose keys are set, else the simulated demo)")
    parser.add_argument("--db", default=None, help="outcome log URL, e.g. sqlite:///outcomes.sqlite (default: server.db)")
    parser.add_argument("--access-log", action="store_true", help="log one line per HTTP request (the outcome log has them all)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from router.config import load_config, resolve_sqlite_url
    from service.app import create_app
    from router.store_errors import redact_url
    from service.governance.runtime import Governance
    from service.presets import build_preset_config
    from service.server_limits import MAX_HEAD_BYTES, BodyDeadline, connection_cap, guarded_protocol, open_file_limit
    from service.simulator import attach_simulator

    # No --config: real providers for the keys in the environment, else the simulated demo.
    config = load_config(args.config) if args.config else (build_preset_config() or load_config(default_config_path()))
    check_db_url(config, args.db)
    if args.config and (missing := written_artifact_missing(config)):
        raise ValueError(missing)
    if args.config and args.db is None:  # --db, typed in a shell, is relative to the working directory
        config = config.model_copy(update={"server": config.server.model_copy(update={"db": resolve_sqlite_url(config, config.server.db)})})
    server = config.server.model_copy(update={k: v for k, v in (("db", args.db), ("host", args.host), ("port", args.port)) if v is not None})
    config = config.model_copy(update={"server": server})

    for warning in start_warnings(config, from_file=bool(args.config)):
        log.warning("%s", warning)
    if args.config:
        log.info("%s: %s (%s)", args.config, counted(len(config.models), "model"), ", ".join(f"{m.name} via {m.provider}" for m in config.models))
    if server.port:  # port 0 is a free one, which no provider can have been given
        refuse_calling_itself(config, server.host, server.port)
    # Bound before anything starts or opens a store, so a busy port is a clear error that leaves nothing running.
    sock = bind(server.host, server.port)
    stop_simulator = None
    try:
        # The checks below need the stores (are there keys?) or a service (Redis); what a start
        # they refuse created is removed again.
        with removed_if_refused(*written_paths(config)):
            config, stop_simulator = attach_simulator(config)
            simulated = frozenset(m.name for m in config.models if config.providers[m.provider].kind == "simulated")
            governance = Governance.from_config(config)
            try:
                # Without any key the gateway is open: it says so, and refuses a non-loopback address.
                notice = governance.startup_check(server.host)
                (log.warning if governance.open_mode() else log.info)("%s", notice)
                if simulated:
                    log.info("demo mode: %s (%s) answered by the local simulator at %s; they are labelled "
                             "simulated in /v1/models and the outcome log", counted(len(simulated), "simulated model"),
                             ", ".join(sorted(simulated)),
                             next(p.base_url for p in config.providers.values() if p.kind == "simulated"))
                app = create_app(config, simulated=simulated, governance=governance)
            except BaseException:
                governance.close()  # before its files are removed
                raise
        port = sock.getsockname()[1]
        # Listening before start-up completes (loading the embedder takes seconds): a client that
        # connects as soon as it reads the line below waits in the backlog instead of being refused.
        sock.listen(2048)
        # One parseable line on stdout: scripts and tests that pass --port 0 read the port from it.
        host = f"[{server.host}]" if ":" in server.host else server.host  # an IPv6 address needs brackets in a URL
        print(f"openclaw-router listening on http://{host}:{port} (outcome log {redact_url(server.db)})", flush=True)
        uvicorn_logs_to_root()
        # Client connections, their heads and bodies are bounded here, not only by a proxy in front
        # (docs/DEPLOYMENT.md): connections that never finish a request had held open files for good.
        cap = connection_cap(server.max_connections, open_file_limit())
        log.info("at most %d client connections at once (server.max_connections); request heads within %g s, "
                 "bodies within %g s", cap, server.header_timeout_s, server.body_timeout_s)
        # On SIGTERM/SIGINT, requests still running at the deadline are cancelled, which ends each
        # one deliberately (service/api_chat.py) before the app's shutdown closes the stores.
        http = http_server(uvicorn.Config(BodyDeadline(app, server.body_timeout_s), log_level="info", log_config=None,
                                          lifespan="on", access_log=args.access_log, timeout_graceful_shutdown=server.shutdown_grace_s,
                                          http=guarded_protocol(cap, server.header_timeout_s),
                                          h11_max_incomplete_event_size=MAX_HEAD_BYTES))
        http.run(sockets=[sock])
    finally:
        sock.close()
        if stop_simulator is not None:
            # Its server shares uvicorn's loggers, at INFO for the gateway's: its shutdown lines
            # would read as the gateway's, a second time.
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
            stop_simulator()
    return 130 if http.interrupted else 0  # Ctrl-C ends with the shell's usual status for it


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on sockets that say they are TCP; without
    # it a response's header and body writes meet Nagle + delayed ACK (+40 ms per request).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def written_paths(config) -> tuple[list[Path], list[Path]]:
    """The SQLite files (outcome log, governance store) and the folders (the cache's) a start creates."""
    from router.config import resolve_path
    from router.outcome_log import sqlite_file
    from service.governance.runtime import GovernanceSettings

    # Named as each store names its URL: a malformed one is reported here, before that store opens it.
    urls = ((config.server.db, "outcome log URL"), (GovernanceSettings.from_env(config).db_url, "governance database URL"))
    files = [Path(f) for url, key in urls if url.startswith("sqlite:") and (f := sqlite_file(url, key)) not in ("", ":memory:")]
    folders = [resolve_path(config, config.cache.path, created=True)] if config.cache.enabled and config.cache.path else []
    return files, folders


@contextlib.contextmanager
def removed_if_refused(files: list[Path], folders: list[Path]) -> Iterator[None]:
    """On a failure inside, what was made for `files` and `folders` that did not exist before is
    removed: a folder made for one, with all it holds; beside a folder that was there, a new SQLite
    file and the companions the stores name after it (`companion_names`), nothing else."""
    trees, companions = set(), []
    for path, is_file in [(f.absolute(), True) for f in files] + [(f.absolute(), False) for f in folders]:
        top = path
        try:
            while not top.parent.exists():
                top = top.parent
            # Under a regular file nothing can be made: the store's own error says what is wrong.
            if top.exists() or not top.parent.is_dir():
                continue
            if is_file and top == path:
                companions.append((path, set(os.listdir(path.parent))))
            else:
                trees.add(top)
        except OSError:  # a folder it may not list: not tracked; a store that cannot write there says why
            continue
    try:
        yield
    except BaseException:
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)
        for path, before in companions:
            ours = companion_names(path.name)
            for name in set(os.listdir(path.parent)) - before:
                if ours.fullmatch(name):
                    with contextlib.suppress(OSError):  # what it could not remove must not hide why the start was refused
                        (path.parent / name).unlink()
        raise


def companion_names(name: str) -> re.Pattern[str]:
    """The files made for the SQLite file `name`: itself, SQLite's `-wal`, `-shm` and `-journal`,
    and the outcome log's journal slots `<name>.journal.<n>.<0|1>.jsonl` (router/outcome_journal.py)."""
    return re.compile(re.escape(name) + r"(-wal|-shm|-journal|\.journal\.\d+\.[01]\.jsonl)?")


def uvicorn_logs_to_root() -> None:
    """uvicorn's loggers write through the handler service/cli.py gives the root logger, in its
    format: uvicorn's own logging config (which the simulator's server applied) gives them two
    handlers in another format, one of them writing the access lines to stdout."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def http_server(config: Any) -> Any:
    """A uvicorn server whose graceful shutdown on SIGTERM or SIGINT returns, with `interrupted`
    telling a Ctrl-C. uvicorn (0.29+) re-raises the signal once it has shut down: SIGTERM's default
    action then kills the process, status 143 after a clean stop (a failure to docker and systemd),
    before the simulator is stopped."""
    import uvicorn

    class Server(uvicorn.Server):
        interrupted = False

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.interrupted = self.interrupted or sig == signal.SIGINT
            super().handle_exit(sig, frame)

    return Server(config)


def check_db_url(config, db: str | None) -> None:
    """A SQLite outcome log URL that names a host instead of a file (`sqlite://name`) is an
    error naming where it was written: --db (relative to the working directory) or server.db
    (relative to the config file)."""
    from router.outcome_log import sqlite_file

    key, url, relative_to = ("--db", db, "the working directory") if db is not None else \
        ("server.db", config.server.db, "the config file")
    if url.startswith("sqlite:"):
        sqlite_file(url, key, relative_to)


def written_artifact_missing(config) -> str | None:
    """What is wrong with a `router.artifact` the config file sets that holds no router: a
    mistyped path would start a gateway answering every `auto` with 503 router_unavailable. One
    left to its default (the shipped models/default, which a wheel lacks) only warns at start,
    and the in-process app still takes a config without a router."""
    from service.gateway import artifact_problem

    problem = artifact_problem(config) if "artifact" in config.router.model_fields_set else None
    return problem and f"{problem}: correct the path, or leave router.artifact out for the shipped router"


def start_warnings(config, from_file: bool) -> list[str]:
    """What `serve` and `check` warn of at start: unset keys, and a `timeout_s` a file chose that no
    longer bounds non-streamed calls (the presets' and the demo's are defaults)."""
    from router.config_checks import answer_timeout_warnings

    return key_warnings(config) + (answer_timeout_warnings(config) if from_file else [])


def key_warnings(config) -> list[str]:
    """Key variables every call would fail with. Warnings, not errors: the other providers' models
    still answer (docs/PROVIDERS.md "Keys"). A provider no model uses is never called: its key is
    not needed."""
    used = {m.provider for m in config.models}
    out = []
    for name, provider in config.providers.items():
        if not provider.api_key_env or name not in used:
            continue
        key = (os.environ.get(provider.api_key_env) or "").strip()
        if not key:
            out.append(f"providers.{name}.api_key_env: {provider.api_key_env} is not set: calls to its models fail until it is")
        elif not key.isprintable():
            out.append(f"providers.{name}.api_key_env: {provider.api_key_env} holds a line break or another control "
                       "character inside the key: calls to its models fail")
    return out


def refuse_calling_itself(config, host: str, port: int) -> None:
    """A provider whose base URL is this gateway's own address (an OPENAI_BASE_URL exported for
    the clients, in the shell that starts the gateway) would send every call back to itself, and
    each would hang until its timeout."""
    from urllib.parse import urlsplit

    # Listening on every address (or on loopback), a loopback URL reaches it; otherwise only its own address does.
    local = {"127.0.0.1", "localhost", "::1", host} if host in ("0.0.0.0", "::", "127.0.0.1", "localhost", "::1") else {host}
    for name, provider in config.providers.items():
        url = urlsplit(provider.base_url)
        default = 443 if url.scheme == "https" else 80
        if url.hostname in local and (url.port or default) == port:
            raise ValueError(f"provider {name}: base_url {provider.base_url} is this gateway's own address, so every "
                             "call would come back to it (a base URL variable meant for the clients?)")
