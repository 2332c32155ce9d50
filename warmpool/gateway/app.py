"""How is the gateway assembled? One FastAPI app: admin API, lease API, ComfyUI proxy, metrics.

The OpenAPI description is served at `/openapi.json` (interactive at `/docs`). The app gets
its Temporal client and secret store from the caller (`__main__.py`, or a test), so it can
share a client with whatever else runs in the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client

from warmpool.clients.token_watch import WATCH_ID
from warmpool.gateway import admin, leases, metrics, proxy
from warmpool.gateway.context import Gateway
from warmpool.gateway.errors import ApiError, on_api_error, on_http_error, on_validation_error
from warmpool.gateway.pools import Pools
from warmpool.gateway.targets import Targets
from warmpool.models import Model
from warmpool.secrets import SecretStore
from warmpool.settings import Settings

MAX_CONNECTIONS = 200
"""Open connections to instances across all leases; a request beyond waits up to the connect
timeout for one to free up."""


class Health(Model):
    status: str
    pools: list[str]


def upstream_client(settings: Settings) -> httpx.AsyncClient:
    """Pooled keep-alive connections to the instances, a deadline on every phase."""
    timeout = httpx.Timeout(
        connect=settings.gateway_connect_timeout_s,
        read=settings.gateway_read_timeout_s,
        write=settings.gateway_read_timeout_s,
        pool=settings.gateway_connect_timeout_s,
    )
    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=50),
        follow_redirects=False,
        trust_env=False,
    )


def create_app(
    settings: Settings,
    client: Client,
    secrets: SecretStore,
    *,
    token_watch_id: str = WATCH_ID,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_client(settings) as http:
            pools = Pools(client, settings.gateway_pools, settings.gateway_temporal_timeout_s)
            targets = Targets(pools, secrets, settings.gateway_lease_cache_s)
            app.state.gateway = Gateway(settings, pools, targets, secrets, http, token_watch_id)
            yield

    app = FastAPI(
        title="comfy-warmpool gateway",
        version="1",
        description=__doc__,
        lifespan=lifespan,
    )
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

    # The proxy first: routes are matched in order, and it carries nearly all the traffic.
    for router in (proxy.router, leases.router, admin.router, metrics.router):
        app.include_router(router)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is up (it does not ask Temporal: see `/metrics` for the pools)."""
        return Health(status="ok", pools=settings.gateway_pools)

    return app
