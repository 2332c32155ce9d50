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

Run it with `python -m warmpool.codec_server --port 8081`: the keys come from `WARMPOOL_CODEC_KEYS`
and the bearer token from `WARMPOOL_CODEC_AUTH_TOKEN` (environment only: argv is visible to every
user of the machine); it refuses a non-loopback address without a token.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from warmpool.codec import KEYS_VARIABLE, AesGcmCodec, KeyringError, parse_keyring
from warmpool.logging import configure_logging

DEFAULT_UI_ORIGIN = "http://127.0.0.1:8233"
DEFAULT_PORT = 8081
AUTH_VARIABLE = "WARMPOOL_CODEC_AUTH_TOKEN"
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the codec from the keys in the environment until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m warmpool.codec_server",
        description="Temporal remote codec server: lets the Web UI and CLI decrypt payloads.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--ui-origin",
        action="append",
        help=f"Web UI origin allowed to call it (repeatable; default {DEFAULT_UI_ORIGIN})",
    )
    args = parser.parse_args(argv)
    spec = os.environ.get(KEYS_VARIABLE, "")
    if not spec.strip():
        parser.error(f"{KEYS_VARIABLE} is not set: the codec server needs the keys")
    try:
        keyring = parse_keyring(spec)
    except KeyringError as exc:
        parser.error(str(exc))
    auth_token = os.environ.get(AUTH_VARIABLE, "").strip() or None
    if auth_token is None and not _is_loopback(args.host):
        parser.error(
            f"refusing to serve on {args.host} without {AUTH_VARIABLE}: "
            "anyone who reaches it could decrypt workflow history"
        )
    configure_logging(secret_values=lambda: [auth_token] if auth_token else [])
    app = create_codec_app(
        AesGcmCodec(keyring),
        allowed_origins=args.ui_origin or [DEFAULT_UI_ORIGIN],
        auth_token=auth_token,
    )
    logging.getLogger("warmpool.codec_server").info(
        "codec server on http://%s:%s (keys %s, auth %s)",
        args.host,
        args.port,
        keyring,
        "on" if auth_token else "off",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
