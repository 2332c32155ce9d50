"""How does a mapped host port refuse, answer, or time out on demand, keeping its number?

The port is bound for the whole life of the mapping, so the number the API reported stays
valid: bound but not listening, a connect is *refused* (nothing listens yet, or ComfyUI died);
listening, it answers; "firewalled", a connect *times out*.

A firewall is imitated on Linux with `listen(0)`: the accept queue holds one connection, which
we fill with our own never-accepted connections, after which the kernel drops further SYNs.
"""

from __future__ import annotations

import contextlib
import logging
import socket

from vastsim.httpserver import Handler, HttpServer

log = logging.getLogger(__name__)


def reserve(host: str, port: int = 0) -> socket.socket:
    """A bound, non-listening TCP socket: connects to it are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class HostPort:
    def __init__(self, host: str) -> None:
        self._host = host
        self._sock: socket.socket | None = reserve(host)
        self.port: int = self._sock.getsockname()[1]
        self._server: HttpServer | None = None
        self._fillers: list[socket.socket] = []

    async def listen(self, handler: Handler) -> None:
        if self._server is not None or self._sock is None or self._fillers:
            return
        sock, self._sock = self._sock, None
        self._server = HttpServer(handler)
        await self._server.start(sock)

    def refuse(self) -> None:
        """Stop answering, drop open connections, keep the number reserved.

        Re-binding can lose a race with another socket taking the number in between; connects
        are then still refused (nothing of ours listens), we only cannot listen there again.
        """
        if self._server is None:
            return
        self._server.close()
        self._server = None
        try:
            self._sock = reserve(self._host, self.port)
        except OSError as exc:
            log.warning("port %s taken by another socket after close: %s", self.port, exc)

    def firewall(self) -> None:
        """From now on connects time out instead of being refused (call before listening)."""
        if self._sock is None or self._fillers:
            return
        self._sock.listen(0)
        for _ in range(2):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((self._host, self.port))
            self._fillers.append(filler)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for sock in [self._sock, *self._fillers]:
            if sock is not None:
                sock.close()
        self._sock = None
        self._fillers.clear()
