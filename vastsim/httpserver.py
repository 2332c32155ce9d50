"""How does the simulator speak HTTP/1.1 cheaply enough for a thousand listeners in one process?

A deliberately small server on asyncio streams: keep-alive, Content-Length and chunked request
bodies, and a hook that hands the connection to a websocket after a 101. One listener costs a
socket and a few small objects, where a full ASGI server per ComfyUI instance would cost far more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

Upgrade = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON_TYPE = "application/json; charset=utf-8"
_MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON; raises ValueError (json.JSONDecodeError) when it is not."""
        return json.loads(self.body)

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None when it is anything else."""
        try:
            body = self.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    upgrade: Upgrade | None = None


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, json.dumps(payload).encode(), JSON_TYPE, list(headers))


def text_response(
    status: int, text: str, content_type: str = "text/plain; charset=utf-8"
) -> Response:
    return Response(status, text.encode(), content_type)


class BadRequest(Exception):
    """The peer sent something that is not HTTP/1.1 we can read; answer 400 and hang up."""


class HttpServer:
    """One listening socket serving one handler; it can drop its open connections on demand.

    Dropping connections matters: a ComfyUI that "dies" must stop answering on keep-alive
    connections too, not only refuse new ones.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, sock: socket.socket, backlog: int = 128) -> None:
        self._server = await asyncio.start_server(self._serve, sock=sock, backlog=backlog)

    def close(self) -> None:
        """Stop listening and abort every open connection at once."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    request, keep_alive = await _read_request(reader)
                except BadRequest:
                    writer.write(_encode(text_response(400, "Bad Request\n"), keep_alive=False))
                    break
                if request is None:
                    break
                response = await self._respond(request)
                writer.write(_encode(response, keep_alive=keep_alive))
                await writer.drain()
                if response.upgrade is not None:
                    await response.upgrade(reader, writer)
                    break
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Ending the connection is all a cancel asks for here; re-raising would make
            # Python 3.11's start_server callback log a spurious traceback at shutdown.
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            return text_response(500, "500 Internal Server Error\n")


async def _read_request(reader: asyncio.StreamReader) -> tuple[Request | None, bool]:
    """The next request on the connection, or None at a clean EOF; and whether to keep alive."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest from exc
        return None, False
    except asyncio.LimitOverrunError as exc:
        raise BadRequest from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise BadRequest from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest
            headers[name.strip().lower()] = value.strip()
    body = await _read_body(reader, headers)
    url = urlsplit(target)
    connection = headers.get("connection", "").lower()
    keep_alive = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    return Request(method.upper(), unquote(url.path), query, headers, body), keep_alive


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError as exc:
                raise BadRequest from exc
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
            if sum(map(len, chunks)) > _MAX_BODY:
                raise BadRequest
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise BadRequest from exc
    if not 0 <= length <= _MAX_BODY:
        raise BadRequest
    return await reader.readexactly(length) if length else b""


def _encode(response: Response, *, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    if response.upgrade is None:
        if response.content_type is not None:
            lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(response.body)}")
        if not keep_alive:
            lines.append("Connection: close")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
