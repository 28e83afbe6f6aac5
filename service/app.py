"""The FastAPI app factory. The request pipeline (hooks) and the API routers are each listed
in one place below: `pipeline_hooks` and `api_routers`."""
from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

from fastapi import APIRouter, FastAPI
from starlette.concurrency import run_in_threadpool

from router.config import Config
from router.outcome_log import OutcomeLog, open_outcome_log
from service import api_admin_router, api_chat, api_feedback, api_info
from service.background import retention_sweeper
from service.errors import install_error_handlers
from service.gateway import build_gateway, load_router
from service.governance import api_admin, api_ui
from service.governance.hook import GovernanceHook
from service.governance.runtime import Governance
from service.hooks.cache_hook import CacheHook
from service.hooks.learning_hook import LearningHook, LearningRuntime
from service.hooks.outcome_hook import OutcomeHook
from service.hooks.prompt_cache_hook import PromptCacheHook
from service.pipeline import Hook
from service.providers.base import Provider, tls_context
from service.router_follow import RouterFollower
from service.routing import Router

log = logging.getLogger(__name__)


def pipeline_hooks(config: Config, outcome_log: OutcomeLog, simulated: frozenset[str], extra: Sequence[Hook],
                   governance: "Governance | None" = None, learning: LearningHook | None = None) -> list[Hook]:
    """Pre-hooks run in this order; post-hooks in reverse. The outcome log records what the hooks
    after it decided (the cache's entry among them); it comes after learning and governance, whose
    post-hooks change nothing it records, so its row is journaled before governance settles: with its
    database away that takes minutes of retries, and a replica killed meanwhile lost the row.
    Governance (keys, budgets) comes before anything that could answer the request, such as the cache."""
    cache = CacheHook.from_config(config) if config.cache.enabled else None
    if cache is not None and learning is not None:
        # An answer feedback rejects is never served from the cache again, after a restart too.
        learning.rt.on_rejected(cache.rejected)
        cache.logged_entry = lambda request_id: ((outcome_log.get(request_id) or {}).get("extras") or {}).get("cache_entry")
    return [
        # Before governance: the bandit's choice is the decision whose cost gets reserved.
        *([learning] if learning is not None else []),
        *([GovernanceHook(governance)] if governance is not None else []),
        OutcomeHook(outcome_log, config.server.prompt_storage, simulated),
        *extra,
        *([cache] if cache is not None else []),
        # Last: a cache hit needs no prices, and the tenant it keys by is known by now. It shares
        # the learning loop's session memory (in Redis with replicas).
        PromptCacheHook(learning.rt.memory if learning is not None else None),
    ]


def api_routers() -> list[APIRouter]:
    return [
        api_chat.router,
        api_info.router,
        api_feedback.router,
        api_admin_router.router,
        api_admin.router,
        api_ui.router,
    ]


def _router_follower(config: Config, gateway: Any) -> RouterFollower | None:
    """With shared Redis, replicas serve whatever router was last promoted on any of them."""
    if not config.server.redis_url:
        return None
    from router.engine import LearnedRouter
    from service.governance.redis_state import connect

    prefix = os.environ.get("OPENCLAW_REDIS_PREFIX", "openclaw")
    return RouterFollower(connect(config.server.redis_url), gateway.router, LearnedRouter.load, prefix=prefix)


def _warm_up(semantic_cache: bool) -> None:
    """What the first requests after a start would otherwise pay for: importing FAISS (~60 ms,
    inside the first answer's cache store, whose lock the second request's lookup then waits on)
    and the upstreams' TLS context (~20 ms, in the first upstream call)."""
    if semantic_cache:
        import faiss  # noqa: F401

    tls_context()


def create_app(
    config: Config,
    *,
    hooks: Sequence[Hook] = (),
    router: Router | None = None,
    load_artifact: bool = True,
    outcome_log: OutcomeLog | None = None,
    providers: dict[str, Provider] | None = None,
    simulated: frozenset[str] = frozenset(),
    governance: Governance | None = None,
) -> FastAPI:
    """A gateway for `config`. `router` defaults to the artifact named in the config
    (`load_artifact=False` serves named models only); `outcome_log` to `server.db`;
    `governance` (keys, budgets, attribution; `Governance.from_config`) is off when None."""
    if router is None and load_artifact:
        router = load_router(config)
    opened = outcome_log is None
    outcome_log = outcome_log or open_outcome_log(config.server.db)
    learning = None
    all_hooks: list[Hook] = []
    try:
        learning = LearningRuntime.from_config(config, router)
        all_hooks = pipeline_hooks(config, outcome_log, simulated, hooks, governance, learning.hook)
        gateway = build_gateway(
            config,
            hooks=all_hooks,
            router=router,
            outcome_log=outcome_log,
            providers=providers,
            simulated=simulated,
        )
        follower = _router_follower(config, gateway)
    except BaseException:
        # A start refused here (a cache folder or Redis it cannot use) closes what it opened: the
        # outcome log's writer thread would otherwise keep the process and its files (which serve
        # then removes) open. So does the response cache's database, opened with the hooks.
        for hook in all_hooks:
            if isinstance(hook, CacheHook):
                hook.close()
        if learning is not None and learning.feedback_log is not None:
            learning.feedback_log.close()
        if opened:
            outcome_log.close()
        raise
    feedback = [learning.feedback_log] if learning.feedback_log is not None else []
    sweeper = retention_sweeper(config.server.retention_days, [outcome_log.store, *feedback])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if router is not None or config.cache.semantic:
            from router.embedding import shared_embedder

            # Loading the embedder (exporting it, the first time on a machine) takes 0.3-5 s:
            # start-up pays it, not the first request.
            await asyncio.to_thread(shared_embedder)
        # Through the worker-thread pool the requests use, so its first use is paid here too.
        await run_in_threadpool(_warm_up, config.cache.enabled and config.cache.semantic)
        if follower is not None:
            try:  # a replica starting after a promotion serves the promoted router from its first request
                await asyncio.to_thread(follower.follow_once)
            except Exception as exc:
                log.warning("router follow: could not read the promoted router at start: %s", exc)
            follower.start()
        if learning.sync is not None:
            learning.sync.start()
        if sweeper is not None:
            sweeper.start()
        yield
        if sweeper is not None:  # before the stores it deletes from close
            sweeper.stop()
        if learning.sync is not None:
            learning.sync.stop()
        if follower is not None:
            follower.stop()
        await gateway.aclose()
        await learning.aclose()  # the shadow work the last requests' post-hooks started
        for hook in all_hooks:
            if isinstance(hook, CacheHook):
                try:
                    hook.close()  # after in-flight tasks finished: their cache writes land first
                except Exception:  # the logs and governance below must still be closed
                    log.exception("closing the response cache failed")
        if learning.feedback_log is not None:
            learning.feedback_log.close()
        if governance is not None:
            await governance.alerts.aclose()
            governance.close()

    # No /docs, /redoc or /openapi.json: they answered without a key, and the first two load
    # Swagger UI from a CDN (this gateway serves nothing from one).
    app = FastAPI(title="OpenClaw Router", version="0.1.0", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.gateway = gateway
    app.state.governance = governance
    learning.attach(gateway)
    app.state.learning = learning
    app.state.router_follower = follower
    if governance is not None:
        governance.attach(gateway)
    install_error_handlers(app)
    for api in api_routers():
        app.include_router(api)
    return app
