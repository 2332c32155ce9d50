"""How does the front end reach its leased ComfyUI? `/comfy/{lease_id}/...`, HTTP and websocket.

Each request resolves the lease (`targets.py`) and goes to the instance's validated URL with
`Authorization: Bearer <instance token>`. What the client sent as Authorization, its cookies
(the studio's session must not reach a rented machine), its Origin and the admin headers are
dropped. Bodies stream both ways (nothing is buffered), and every hop has a deadline: connect
(`WARMPOOL_GATEWAY_CONNECT_TIMEOUT_S`), each read or write (`..._READ_TIMEOUT_S`), Temporal
(`..._TEMPORAL_TIMEOUT_S`), websocket pings every 20 s on both sides.

Answers of our own, all JSON `{"error", "detail"}`: 404 unknown lease; 410 lease ended or
expired; 503 instance unreachable (`instance_unreachable`) or ComfyUI not up behind the portal
(`comfy_not_ready`); 504 no answer in time; 502 the portal refused the gateway's token (a
configuration error: WARMPOOL_INSTANCE_SECRET differs from the workers'). A websocket that
cannot be opened gets the same answers as its handshake response; an open one is closed with
code 4410 when its lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Annotated

import httpx
import websockets
from fastapi import APIRouter, Path, Request, WebSocket
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Scope
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection

from warmpool.comfy import PLACEHOLDER_HEADER
from warmpool.gateway.context import Gateway, gateway_of
from warmpool.gateway.errors import ApiError, documented
from warmpool.gateway.leases import LEASE_ID_PATTERN
from warmpool.gateway.meters import status_class
from warmpool.gateway.targets import Target

log = logging.getLogger("warmpool.gateway.proxy")

router = APIRouter(tags=["comfy proxy"])

LeaseId = Annotated[str, Path(pattern=LEASE_ID_PATTERN, description="the lease's id")]
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "authorization",
    "cookie",
    "origin",
    "x-admin-key",
    "x-admin-api-key",
}
WS_MAX_MESSAGE = 64 * 1024 * 1024
"""ComfyUI sends preview and SaveImageWebsocket images as binary messages."""
WS_PING_S = 20.0
CLOSE_LEASE_ENDED = 4410
CLOSE_UPSTREAM_LOST = 1011
_NO_CLOSE_FRAME = {None, 1005, 1006, 1015}


def upstream_path(scope: Scope, lease_id: str) -> str:
    """The request's path after `/comfy/<lease_id>`, as sent (still percent-encoded), + query."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    rest = raw[len(f"/comfy/{lease_id}") :] or b"/"
    query: bytes = scope.get("query_string", b"")
    return (rest + (b"?" + query if query else b"")).decode("latin-1")


def _forwarded(
    raw: Iterable[tuple[bytes, bytes]], drop: frozenset[str]
) -> list[tuple[bytes, bytes]]:
    """Headers minus `drop` and minus any header the Connection header names (RFC 9110 7.6.1)."""
    pairs = list(raw)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    return [
        (name, value)
        for name, value in pairs
        if (key := name.decode("latin-1").lower()) not in drop and key not in named
    ]


def _unreachable(target: Target, exc: BaseException) -> ApiError:
    return ApiError(
        503,
        "instance_unreachable",
        f"the instance of lease {target.lease_id} at {target.url} is unreachable "
        f"({type(exc).__name__})",
    )


def _refusal(target: Target, status: int, headers: Mapping[str, str]) -> ApiError | None:
    """Our answer when the portal, not ComfyUI, answered; None to pass the answer through."""
    if status == 401:
        return ApiError(
            502,
            "instance_rejected_token",
            f"the instance of lease {target.lease_id} rejected the gateway's token: "
            "WARMPOOL_INSTANCE_SECRET differs from the workers'",
        )
    if headers.get(PLACEHOLDER_HEADER, "").strip().lower() == "true":
        return ApiError(
            503,
            "comfy_not_ready",
            f"ComfyUI on the instance of lease {target.lease_id} is not answering "
            "(the portal shows its placeholder)",
        )
    return None


async def _relay(response: httpx.Response, lease_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        log.warning("lease %s: upstream body cut short (%s)", lease_id, type(exc).__name__)
        raise
    finally:
        await response.aclose()


async def forward(request: Request, lease_id: str) -> Response:
    """Proxy one HTTP request, counted by outcome (`meters.py`)."""
    gateway = gateway_of(request)
    started = time.perf_counter()
    try:
        answer = await _forward(gateway, request, lease_id)
    except ApiError as exc:
        gateway.meters.proxied(exc.error, started)
        raise
    gateway.meters.proxied(status_class(answer.status_code), started)
    return answer


async def _forward(gateway: Gateway, request: Request, lease_id: str) -> Response:
    target = await gateway.targets.resolve(lease_id)
    headers = _forwarded(request.headers.raw, NOT_FORWARDED)
    headers.append((b"authorization", f"Bearer {target.token}".encode()))
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    upstream = gateway.http.build_request(
        request.method,
        target.url + upstream_path(request.scope, lease_id),
        headers=headers,
        content=request.stream() if has_body else None,
    )
    try:
        response = await gateway.http.send(upstream, stream=True)
    except (httpx.ReadTimeout, httpx.WriteTimeout):
        limit = gateway.settings.gateway_read_timeout_s
        raise ApiError(
            504,
            "instance_timeout",
            f"the instance of lease {lease_id} did not answer within {limit:g}s",
        ) from None
    except httpx.TransportError as exc:
        raise _unreachable(target, exc) from None
    refusal = _refusal(target, response.status_code, response.headers)
    if refusal is not None:
        await response.aclose()
        raise refusal
    answer = StreamingResponse(_relay(response, lease_id), status_code=response.status_code)
    answer.raw_headers = _forwarded(response.headers.raw, HOP_BY_HOP)
    return answer


PROXY_PATH = "/comfy/{lease_id}/{path:path}"
PROXY_ERRORS = documented(404, 410, 502, 503, 504)


@router.get(PROXY_PATH, response_model=None, responses=PROXY_ERRORS)
async def proxy_get(request: Request, lease_id: LeaseId, path: str) -> Response:
    """GET `path` on the leased ComfyUI (e.g. `system_stats`, `history/<id>`, `view?...`)."""
    return await forward(request, lease_id)


@router.post(PROXY_PATH, response_model=None, responses=PROXY_ERRORS)
async def proxy_post(request: Request, lease_id: LeaseId, path: str) -> Response:
    """POST `path` on the leased ComfyUI (e.g. `prompt`, `queue`, `interrupt`, `upload/image`)."""
    return await forward(request, lease_id)


@router.api_route(
    PROXY_PATH,
    methods=["PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,
    response_model=None,
)
async def proxy_other(request: Request, lease_id: LeaseId, path: str) -> Response:
    return await forward(request, lease_id)


@router.get("/comfy/{lease_id}", include_in_schema=False)
async def proxy_root(lease_id: LeaseId) -> RedirectResponse:
    """ComfyUI's page loads relative URLs: it must be served under a trailing slash."""
    return RedirectResponse(f"/comfy/{lease_id}/", status_code=307)


# ---- websocket ---------------------------------------------------------------------------------


async def _open_upstream(gateway: Gateway, target: Target, scope: Scope) -> ClientConnection:
    url = "ws" + target.url.removeprefix("http") + upstream_path(scope, target.lease_id)
    subprotocols = scope.get("subprotocols") or None
    try:
        return await websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {target.token}"},
            subprotocols=subprotocols,
            open_timeout=gateway.settings.gateway_connect_timeout_s,
            ping_interval=WS_PING_S,
            ping_timeout=WS_PING_S,
            close_timeout=5,
            max_size=WS_MAX_MESSAGE,
            compression=None,
            proxy=None,
        )
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
        refusal = _refusal(target, status, exc.response.headers)
        if refusal is not None:
            raise refusal from None
        if 400 <= status < 500:
            raise ApiError(
                status, "upstream_refused", f"ComfyUI refused the websocket: HTTP {status}"
            ) from None
        raise _unreachable(target, exc) from None
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        raise _unreachable(target, exc) from None


async def _to_upstream(client: WebSocket, upstream: ClientConnection) -> None:
    while True:
        message = await client.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await upstream.send(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send(message["bytes"])


async def _to_client(client: WebSocket, upstream: ClientConnection) -> None:
    async for message in upstream:
        if isinstance(message, str):
            await client.send_text(message)
        else:
            await client.send_bytes(message)


async def _lease_gone(gateway: Gateway, lease_id: str, *, fresh: bool) -> ApiError | None:
    """Why the lease is over (404/410), or None while it is active or Temporal is silent.
    `fresh` asks the pool now instead of trusting a cached answer."""
    if fresh:
        gateway.targets.forget(lease_id)
    try:
        await gateway.targets.resolve(lease_id)
    except ApiError as exc:
        if exc.status in (404, 410):
            return exc
    return None


async def _watch_lease(gateway: Gateway, lease_id: str) -> ApiError:
    """Returns once the lease is gone (checked through the lease cache, so at most one query
    per cache period per lease, however many sockets it has)."""
    interval = max(gateway.settings.gateway_lease_cache_s, 0.5)
    while True:
        await asyncio.sleep(interval)
        if (gone := await _lease_gone(gateway, lease_id, fresh=False)) is not None:
            return gone


async def _pump(
    gateway: Gateway, client: WebSocket, upstream: ClientConnection, lease_id: str
) -> None:
    inbound = asyncio.create_task(_to_upstream(client, upstream))
    outbound = asyncio.create_task(_to_client(client, upstream))
    watch = asyncio.create_task(_watch_lease(gateway, lease_id))
    tasks = {inbound, outbound, watch}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if inbound in done and not inbound.cancelled() and inbound.exception() is None:
        return  # the client left; leaving `async with upstream` closes the other side
    ended = (
        watch.result()
        if watch in done and not watch.cancelled() and not watch.exception()
        else None
    )
    if ended is None and upstream.close_code in _NO_CLOSE_FRAME:
        ended = await _lease_gone(gateway, lease_id, fresh=True)  # a retired instance drops sockets
    if ended is not None:
        code, reason = CLOSE_LEASE_ENDED, ended.detail
    elif upstream.close_code in _NO_CLOSE_FRAME:
        code, reason = CLOSE_UPSTREAM_LOST, "connection to the instance lost"
    else:
        code, reason = upstream.close_code or 1000, upstream.close_reason or ""
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await client.close(code, reason.encode()[:120].decode(errors="ignore"))


@router.websocket("/comfy/{lease_id}/{path:path}")
async def proxy_websocket(client: WebSocket, lease_id: str, path: str) -> None:
    """ComfyUI's `/ws?clientId=...` (progress, previews, results) to the leased instance."""
    gateway = gateway_of(client)
    try:
        if not re.fullmatch(LEASE_ID_PATTERN, lease_id):
            raise ApiError(404, "unknown_lease", "not a lease id")
        target = await gateway.targets.resolve(lease_id)
        upstream = await _open_upstream(gateway, target, client.scope)
    except ApiError as exc:
        gateway.meters.websockets.labels(exc.error).inc()
        await client.send_denial_response(exc.response())
        return
    async with upstream:
        await client.accept(subprotocol=upstream.subprotocol)
        with gateway.meters.websocket_open():
            await _pump(gateway, client, upstream, lease_id)
