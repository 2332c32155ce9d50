"""How is the gateway assembled? One FastAPI app: admin API, lease API, ComfyUI proxy, metrics.

The OpenAPI description is served at `/openapi.json` with `API_DESCRIPTION` (what a caller of
the API needs), interactive at `/docs` from the Swagger UI assets of the installed
`swagger-ui-bundle` package (no CDN: it works offline). Every error the gateway itself answers
is JSON (`errors.ErrorBody`), a framework's plain-text one included (`JsonErrors`). The app gets
its Temporal client and secret store from the caller (`__main__.py`, or a test), so it can
share a client with whatever else runs in the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import swagger_ui_bundle  # type: ignore[import-untyped]  # no type hints; one Path
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from warmpool.clients.token_watch import WATCH_ID
from warmpool.gateway import admin, leases, metrics, proxy
from warmpool.gateway.context import Gateway
from warmpool.gateway.errors import (
    ApiError,
    error_response,
    http_error_code,
    on_api_error,
    on_http_error,
    on_validation_error,
)
from warmpool.gateway.pools import Pools
from warmpool.gateway.targets import Targets
from warmpool.models import Model
from warmpool.secrets import SecretStore
from warmpool.settings import Settings

MAX_CONNECTIONS = 200
"""Open connections to instances across all leases; a request beyond waits up to the connect
timeout for one to free up."""


API_DESCRIPTION = """\
The comfy-warmpool gateway: a studio's front end leases a warm ComfyUI GPU instance here and
reaches it through the gateway.

1. `POST /api/leases` with `{"holder": "alice", "duration_s": 3600}` answers 201 with a lease
   whose `proxy_path` (`/comfy/<lease_id>/`) is where ComfyUI answers, HTTP and websocket.
2. `POST /api/leases/{lease_id}/renew` extends it; `POST /api/leases/{lease_id}/release` ends
   it (idempotent).
3. `/api/proxy/...` are the operators' endpoints (header `X-Admin-Key`); `/metrics` is
   Prometheus text; `/healthz` says the process is up.

Every error is JSON: `{"error": "<code>", "detail": "<one line>"}` (`request_id` too on a lease
request that went unanswered: retry with it to get that lease, never a second one).
"""

DOCS_ASSETS = "/docs-assets"


class JsonErrors:
    """A plain-text error the framework answers by itself (e.g. 413 when a body's
    Content-Length is over the limit, before any route runs) becomes our JSON `ErrorBody`.
    Proxied ComfyUI answers (`/comfy/...`) pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/comfy/"):
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_json_errors(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                kind = headers.get(b"content-type", b"").decode("latin-1")
                if message["status"] >= 400 and kind.startswith("text/plain"):
                    status = int(message["status"])  # answered below, with the text as detail
                    return
            elif status and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # a framework's one-line text comes in one part
                detail = message.get("body", b"").decode("utf-8", "replace").strip()
                response = error_response(status, http_error_code(status), detail or "error")
                await response(scope, receive, send)
                return
            await send(message)

        await self.app(scope, receive, send_json_errors)


def add_offline_docs(app: FastAPI) -> None:
    """`/docs` from the installed Swagger UI assets instead of a CDN."""
    app.mount(
        DOCS_ASSETS,
        StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)),
        name="docs-assets",
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


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
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the installed assets below
        redoc_url=None,  # ReDoc would need a CDN
    )
    app.add_middleware(JsonErrors)
    add_offline_docs(app)
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
