"""Every replica serves the promoted router: a hot reload on one replica reaches all of them.

`retrain` (or an operator) promotes a router by `POST /admin/router/reload` to one gateway, which
behind a load balancer is any one replica. With `server.redis_url` set, that replica records the
artifact's path under `<prefix>:router:artifact`; every replica watches the key (one GET a second,
in a background thread, off the request path), loads a path it has not applied and swaps it in
atomically (`RouterSlot.swap`), and a replica that starts later loads it at start instead of its
configured artifact. The path must be readable from every replica (a shared volume or image).
A path that cannot be loaded is logged and skipped; the replica keeps the router it has.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from service.background import Repeater

log = logging.getLogger(__name__)
POLL_S = 1.0


class RouterFollower:
    def __init__(self, client: Any, slot: Any, load: Callable[[str], Any], prefix: str = "openclaw"):
        self.r = client
        self.slot = slot
        self.load = load
        self.key = f"{prefix}:router:artifact"
        self.applied: str | None = None  # the record this replica serves (or tried and could not load)
        self._worker = Repeater("router-follow", self.follow_once, pause_s=POLL_S)

    def promote(self, path: str) -> None:
        """Record a router this replica has just swapped in, for the others to follow."""
        record = json.dumps({"path": path, "at": time.time()})
        self.applied = record
        try:
            self.r.set(self.key, record)
        except Exception as exc:  # the promotion itself stands on this replica
            log.warning("router follow: could not record the promoted router in Redis: %s", exc)

    def follow_once(self) -> bool:
        """Apply the recorded router if it is new to this replica; True when one was swapped in."""
        record = self.r.get(self.key)
        if record is None or record == self.applied:
            return False
        self.applied = record
        path = json.loads(record)["path"]
        try:
            router = self.load(path)
        except (OSError, ValueError) as exc:
            log.error("router follow: the promoted router %s cannot be loaded here, keeping the current one: %s", path, exc)
            return False
        self.slot.swap(router)
        log.info("router follow: now serving the promoted router %s", path)
        return True

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
