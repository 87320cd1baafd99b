"""The gateway app factory: `create_app(settings)` wires storage, quotas, the backend and the routes."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

import stillwatch
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.admin import admin_router
from stillwatch.guard.audit import AuditLog
from stillwatch.guard.backends import Backend, make_backend
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.deps import Gateway, RefusalBudget, audit_error
from stillwatch.guard.detection import OnlineDetection
from stillwatch.guard.errors import install_handlers
from stillwatch.guard.metrics import Metrics
from stillwatch.guard.middleware import GuardMiddleware
from stillwatch.guard.quotas import Quotas, QuotaStore
from stillwatch.guard.routes import openai_router, ops
from stillwatch.guard.settings import GuardSettings

log = logging.getLogger("stillwatch.guard")


def detector_action_counts(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """How many of each action the online detector has applied (the account_actions it recorded)."""
    from sqlalchemy import func, select

    from stillwatch.guard.tables import AccountAction

    with engine.connect() as conn:
        rows = conn.execute(select(AccountAction.action, func.count()).where(AccountAction.source == "detector")
                            .group_by(AccountAction.action)).all()
    return {action: int(n) for action, n in rows}


def create_app(settings: GuardSettings | None = None, backend: Backend | None = None) -> FastAPI:
    """A FastAPI app for `settings`; its lifespan migrates the database, loads the backend (a local model,
    or a pooled client to `--upstream`) and starts the audit writer, and stops them in reverse order.

    `backend` replaces the one the settings describe (tests, benchmarks)."""
    settings = settings or GuardSettings()
    if backend is None:
        settings.backend_kind()  # ConfigError unless the settings name exactly one backend
    engine = make_engine(settings.db_url, settings.sqlite_synchronous)
    store, audit = AccountStore(engine), AuditLog(engine, settings)
    quotas = Quotas(settings.rate_limit_storage, settings.quotas_file, store=QuotaStore(engine))
    metrics = Metrics()
    audit.on_commit = metrics.audit_commit.observe
    metrics.watch_queue("audit", audit.queue_depth)
    if settings.detection:
        metrics.watch_detector_actions(lambda: detector_action_counts(engine))
    # The policy is read and checked here, so a bad file fails before anything starts.
    detection = OnlineDetection(store, settings) if settings.detection else None
    gw = Gateway(settings=settings, store=store, audit=audit, quotas=quotas, metrics=metrics, detection=detection,
                 refusals=RefusalBudget(settings.refusals_audited_per_minute),
                 inline_db=engine.dialect.name == "sqlite",
                 inline_quotas=settings.rate_limit_storage.startswith("memory"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade, engine)
        seeded = await asyncio.to_thread(quotas.seed)
        if seeded:
            log.info("quotas seeded from %s: %s", settings.quotas_file, ", ".join(seeded))
        chosen = backend if backend is not None else await asyncio.to_thread(make_backend, settings)
        if hasattr(chosen, "batcher"):
            chosen.batcher.on_batch = metrics.observe_batch
            metrics.watch_queue("batch", chosen.batcher.depth)
        await chosen.start()
        await audit.start()
        if detection is not None:
            await detection.start(chosen, quotas)
        gw.backend = chosen
        try:
            yield
        finally:
            gw.backend = None
            if detection is not None:
                await detection.stop()
            await chosen.stop()
            await audit.stop()  # writes everything queued before the process ends
            engine.dispose()

    # The OpenAPI document describes the admin API too: off unless asked for, and never the HTML pages,
    # which would load scripts from a CDN.
    app = FastAPI(title="stillwatch gateway", version=getattr(stillwatch, "__version__", "0"), lifespan=lifespan,
                  description="An OpenAI-compatible gateway with accounts, keys, quotas and a durable audit log.",
                  openapi_url="/openapi.json" if settings.openapi_docs else None, docs_url=None, redoc_url=None)
    app.state.gateway = gw
    install_handlers(app, on_error=audit_error)
    # A pass-through backend keeps every field of a request as sent; a model in process takes strict ones.
    passthrough = bool(getattr(backend, "passthrough", False)) if backend is not None else settings.upstream is not None
    app.include_router(openai_router(passthrough))
    app.include_router(ops)
    app.include_router(admin_router(store, audit, settings), prefix="/admin")
    app.add_middleware(GuardMiddleware, max_body=settings.max_body_bytes, metrics=metrics,
                       body_timeout_s=settings.body_timeout_s, request_log=settings.log_format == "json",
                       log_prompts=settings.log_prompts, large_body=settings.large_body_bytes,
                       large_per_key=settings.large_body_per_key, large_total=settings.large_body_total)
    return app
