"""What stands on the other side of a probe? Tiny loopback servers that behave like real instances.

- `FakeHttpServer` + `Portal`: Vast.ai's Caddy portal (401 without the Bearer token, 502 with
  `X-Portal-Placeholder: true` while starting, then ComfyUI's JSON).
- `FakeHttpServer` + `comfy_ready`: a bare ComfyUI, started on a `free_port()` that refused before.
- `Blackhole`: a listener whose accept queue is full, so SYNs are dropped and connect times out.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SYSTEM_STATS: dict[str, Any] = {
    "system": {
        "os": "posix",
        "ram_total": 25276063744,
        "ram_free": 24246075392,
        "comfyui_version": "0.3.64",
        "python_version": "3.11.7",
        "pytorch_version": "2.14.1+cu130",
        "embedded_python": False,
        "argv": ["main.py", "--listen", "127.0.0.1", "--port", "18188"],
    },
    "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 1, "vram_free": 1}],
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang_up: bool = False  # close the connection without answering

    @classmethod
    def json(cls, status: int, data: Any, **kwargs: Any) -> Reply:
        return cls(status, json.dumps(data).encode(), **kwargs)


Handler = Callable[[Request], Reply]
_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 502: "Bad Gateway"}


def comfy_ready(request: Request) -> Reply:
    """ComfyUI itself: /system_stats answers at once."""
    if request.path == "/system_stats":
        return Reply.json(200, SYSTEM_STATS)
    return Reply(404, b"", content_type="text/plain")


@dataclass
class Portal:
    """Caddy in front of ComfyUI: token first, then the placeholder until `ready`."""

    token: str
    ready: bool = False
    placeholder_status: int = 502  # 200 when reached through a Cloudflare tunnel
    delay: float = 0.0
    answered_at: list[float] = field(default_factory=list)

    def __call__(self, request: Request) -> Reply:
        self.answered_at.append(time.monotonic() + self.delay)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(
                401,
                b"",
                content_type="text/plain",
                headers={"WWW-Authenticate": 'Basic realm="restricted"'},
                delay=self.delay,
            )
        if not self.ready:
            return Reply(
                self.placeholder_status,
                b"<html><body>Instance is starting...</body></html>",
                content_type="text/html",
                headers={"X-Portal-Placeholder": "true"},
                delay=self.delay,
            )
        reply = comfy_ready(request)
        reply.delay = self.delay
        return reply


class FakeHttpServer:
    """A one-request-per-connection HTTP/1.1 server on 127.0.0.1 driven by a handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> FakeHttpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            request = Request(method, path, headers)
            self.requests.append(request)
            reply = self.handler(request)
            await asyncio.sleep(reply.delay)
            if not reply.hang_up:
                writer.write(_encode(reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the prober hung up first, e.g. after its own timeout
        finally:
            writer.close()


def _encode(reply: Reply) -> bytes:
    lines = [
        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in reply.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


def free_port() -> int:
    """A loopback port nothing listens on (connect is refused) that a server may take later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Blackhole:
    """A listener with backlog 0 whose accept queue we fill: further SYNs are silently dropped."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        for _ in range(16):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self._fillers.append(filler)
            _, writable, _ = select.select([], [filler], [], 0.2)
            if not writable:  # this SYN was dropped: the queue is full
                return
        raise RuntimeError("could not fill the accept queue")

    def close(self) -> None:
        for sock in [*self._fillers, self._listener]:
            sock.close()
