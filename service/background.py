"""A daemon thread that repeats one step until stopped: the shape of every Redis follower here
(service/bandit_sync.py, service/router_follow.py) and of the outcome log's retention sweep
(`retention_sweeper`). A step that fails (Redis away) is logged and retried after `retry_s`; the
gateway keeps serving meanwhile."""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from router.retention import SWEEP_EVERY_S, Prunable, RetentionSweep

log = logging.getLogger(__name__)


class Repeater:
    def __init__(self, name: str, step: Callable[[], object], pause_s: float = 0.0, retry_s: float = 1.0):
        self.name = name
        self.step = step
        self.pause_s = pause_s  # between successful steps (a step that blocks on Redis needs none)
        self.retry_s = retry_s
        self.stopping = threading.Event()  # a long step (the retention sweep) ends early once it is set
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception as exc:
                log.warning("%s: %s", self.name, exc)
                self.stopping.wait(self.retry_s)
                continue
            if self.pause_s:
                self.stopping.wait(self.pause_s)


def retention_sweeper(days: int | None, stores: Sequence[Prunable]) -> Repeater | None:
    """`server.retention_days`: the outcome log's rows older than `days` deleted at start and hourly
    after (router/retention.py), beside the requests; None when every row is kept."""
    if days is None:
        return None
    sweep = RetentionSweep(days, stores)
    worker = Repeater("retention-sweep", lambda: sweep.run(worker.stopping), pause_s=SWEEP_EVERY_S, retry_s=300.0)
    return worker
