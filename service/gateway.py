"""Everything one running gateway holds: config, providers, live state, router slot, pipeline,
metrics and the outcome log, plus the chat requests in flight and the background tasks that
run post-hooks off the latency path (both awaited on shutdown so no outcome is lost)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Coroutine

import numpy as np

from router.config import Config
from router.outcome_log import OutcomeLog
from service.dispatch import Dispatcher
from service.live_state import LiveState
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.providers.base import Provider
from service.routing import Router, RouterSlot

log = logging.getLogger(__name__)

# How long shutdown waits, after the server's own deadline has cut what still ran, for those
# requests to end and for every post-hook to finish before the stores close.
DRAIN_WAIT_S = 5.0


@dataclass
class Gateway:
    config: Config
    providers: dict[str, Provider]
    live: LiveState
    metrics: Metrics
    dispatcher: Dispatcher
    pipeline: Pipeline
    router: RouterSlot
    outcome_log: OutcomeLog | None = None
    simulated: frozenset[str] = frozenset()  # models answered by the built-in simulator
    tasks: set[asyncio.Task] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)  # ids of chat requests not yet finished (api_chat.finish)

    def embed(self, text: str) -> np.ndarray:
        from router.embedding import embed_request_text

        return embed_request_text(text)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def aclose(self) -> None:
        await self._drain(DRAIN_WAIT_S)
        for provider in self.providers.values():
            await provider.aclose()
        if self.outcome_log is not None:
            self.outcome_log.close()  # after the drain: it writes the rows the last post-hooks queued

    async def _drain(self, wait_s: float) -> None:
        """Wait, at most `wait_s`, until no request is in flight and no post-hook is pending. A
        request the server cancelled at its shutdown deadline ends, and starts its post-hooks,
        some loop turns after the shutdown began: tasks started meanwhile are waited for too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.in_flight or self.tasks:
            left = deadline - loop.time()
            if left <= 0:
                log.warning("shutdown: %d request(s) still in flight and %d post-hook task(s) still running after %.1f s; "
                            "closing without them", len(self.in_flight), len(self.tasks), wait_s)
                return
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=left)
            else:
                await asyncio.sleep(min(0.01, left))


NO_ROUTER = "auto answers 503 router_unavailable until one is there (named models still work)"


def artifact_problem(config: Config) -> str | None:
    """What is wrong with `router.artifact` (found next to the config file, in the working
    directory or in the package): the folder it names holds no router; None when it does."""
    from router.engine import MANIFEST, find_artifact

    path = find_artifact(config.router.artifact, config)
    if (path / MANIFEST).exists():
        return None
    return f"router.artifact {config.router.artifact!r}: no router artifact ({MANIFEST}) at {path.resolve()}"


def load_router(config: Config) -> Router | None:
    """The router artifact named by `router.artifact`, or None with a warning: named models still
    work without it."""
    from router.config_checks import unseen_model_warnings
    from router.engine import LearnedRouter, find_artifact

    problem = artifact_problem(config)
    if problem:
        log.warning("%s: %s", problem, NO_ROUTER)
        return None
    path = find_artifact(config.router.artifact, config)
    router = LearnedRouter.load(path)
    for warning in unseen_model_warnings(config.models, router.unseen(config.models), router.models):
        log.warning("%s (%s)", warning, path)
    log.info("router artifact loaded from %s", path)
    return router


def build_gateway(config: Config, *, hooks: list | None = None, router: Router | None = None,
                  outcome_log: OutcomeLog | None = None, providers: dict[str, Provider] | None = None,
                  simulated: frozenset[str] = frozenset()) -> Gateway:
    from service.providers.registry import build_provider

    live = LiveState(config)
    metrics = Metrics()
    providers = providers if providers is not None else {name: build_provider(spec) for name, spec in config.providers.items()}
    return Gateway(
        config=config,
        providers=providers,
        live=live,
        metrics=metrics,
        dispatcher=Dispatcher(config, providers, live, metrics),
        pipeline=Pipeline(hooks or []),
        router=RouterSlot(router),
        outcome_log=outcome_log,
        simulated=simulated,
    )
