"""How do the Temporal Web UI and CLI read encrypted payloads? A codec server over HTTP.

It speaks the remote codec protocol: `POST .../encode` and `POST .../decode` with a `Payloads`
message in protobuf JSON (`{"payloads": [{"metadata": {k: b64}, "data": b64}]}`); only the last
path segment matters, so `/decode` and `/<namespace>/decode` both work. The UI calls it from the
browser, hence CORS for the UI's origin (the preflight allows `Content-Type`, `X-Namespace` and
`Authorization`).

Anyone who can reach this endpoint can decrypt history, so bind it to loopback and, when it is
reachable by others, set `auth_token`: requests must then send `Authorization: Bearer <token>`
(the CLI's `--codec-auth`). The UI of the local dev server has no way to send a custom token,
so leave auth off only on a loopback-only setup.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

DEFAULT_UI_ORIGIN = "http://127.0.0.1:8233"
_ALLOWED_HEADERS = ("Content-Type", "X-Namespace", "Authorization")

_Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def create_codec_app(
    codec: PayloadCodec,
    *,
    allowed_origins: Sequence[str] = (DEFAULT_UI_ORIGIN,),
    auth_token: str | None = None,
) -> Starlette:
    """An ASGI app serving `codec`; run it with uvicorn next to the Web UI."""
    expected = f"Bearer {auth_token}".encode() if auth_token else None

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    async def handle(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        operation = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        transform: _Transform | None = {"encode": codec.encode, "decode": codec.decode}.get(
            operation
        )
        if transform is None:
            return JSONResponse({"error": "not found: use .../encode or .../decode"}, 404)
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except json_format.ParseError as exc:
            return JSONResponse({"error": f"body is not a Payloads message: {exc}"}, 400)
        try:
            result = Payloads(payloads=await transform(payloads.payloads))
        except ValueError as exc:  # the codec's own errors carry no key material
            return JSONResponse({"error": str(exc)}, 422)
        return Response(json_format.MessageToJson(result), media_type="application/json")

    return Starlette(
        routes=[Route("/{path:path}", handle, methods=["POST"])],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(allowed_origins),
                allow_methods=["POST"],
                allow_headers=list(_ALLOWED_HEADERS),
                allow_credentials=True,
            )
        ],
    )
