"""One gateway replica as its own process, for the scale-out tests.

    python -m tests.governance_replica '{"upstream": URL, "db": DB_URL, "redis": REDIS_URL}'

Serves the real app (`create_app` with governance from the environment: OPENCLAW_MASTER_KEY,
OPENCLAW_REDIS_PREFIX, ...) with the fixed-quality router of the gateway tests on a free
127.0.0.1 port, and prints `READY <port>` once the port listens.
"""
from __future__ import annotations

import json
import socket
import sys

import uvicorn


def main() -> None:
    from service.app import create_app
    from service.governance.runtime import Governance
    from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, fake_config
    from tests.governance_harness import MODELS

    args = json.loads(sys.argv[1])
    config = fake_config(args["upstream"], args["db"], models=MODELS, timeout_s=30.0)
    config = config.model_copy(update={"server": config.server.model_copy(update={"redis_url": args["redis"]})})
    app = create_app(config, router=QualityRouter(DEFAULT_QUALITY), load_artifact=False,
                     governance=Governance.from_config(config))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    # The socket already listens: connections made from now on wait in its backlog until
    # uvicorn accepts them, so the parent may start sending as soon as it reads the port.
    print(f"READY {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")).run(sockets=[sock])

if __name__ == "__main__":
    main()
