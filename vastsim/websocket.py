"""How does a ComfyUI stub hold a websocket without a framework? RFC 6455, server side only.

Only what ComfyUI's `/ws` needs: the handshake, unmasked text frames out, masked frames in
(text, ping, close, continuation). Real clients (the `websockets` library, browsers) talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vastsim.httpserver import Response, text_response

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_MESSAGE = 1024 * 1024
_MAX_BUFFERED = 1024 * 1024
_TEXT, _BINARY, _CLOSE, _PING, _PONG, _CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class WebSocket:
    """One accepted websocket. Sends never block: a peer that stops reading is dropped."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @property
    def closed(self) -> bool:
        return self._writer.transport.is_closing()

    def send_json(self, payload: Any) -> None:
        self._send(_TEXT, json.dumps(payload).encode())

    def close(self) -> None:
        self._writer.transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            return
        transport = self._writer.transport
        if transport.get_write_buffer_size() > _MAX_BUFFERED:
            transport.abort()
            return
        self._writer.write(_frame(opcode, payload))

    async def receive_text(self) -> str | None:
        """The next text message, or None once the peer closed (pings are answered here)."""
        message = bytearray()
        while True:
            try:
                fin, opcode, payload = await self._read_frame()
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                self.close()
                return None
            if opcode == _PING:
                self._send(_PONG, payload)
            elif opcode == _CLOSE:
                self._send(_CLOSE, payload[:2])
                self._writer.close()
                return None
            elif opcode in (_TEXT, _BINARY, _CONTINUATION):
                message += payload
                if len(message) > _MAX_MESSAGE:
                    self.close()
                    return None
                if fin:
                    return message.decode("utf-8", "replace")

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = await self._reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._reader.readexactly(8))
        if length > _MAX_MESSAGE:
            raise ValueError("websocket frame too large")
        mask = await self._reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
        data = await self._reader.readexactly(length)
        unmasked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return bool(first & 0x80), first & 0x0F, unmasked


def accept(headers: Mapping[str, str], session: Callable[[WebSocket], Awaitable[None]]) -> Response:
    """The 101 answer that hands the connection to `session`, or 400 if this is no handshake."""
    key = headers.get("sec-websocket-key")
    if headers.get("upgrade", "").lower() != "websocket" or not key:
        return text_response(400, "Can not upgrade to websocket\n")
    digest = hashlib.sha1((key + _GUID).encode()).digest()  # the RFC mandates SHA-1

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await session(WebSocket(reader, writer))

    return Response(
        101,
        headers=[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", base64.b64encode(digest).decode()),
        ],
        upgrade=run,
    )


def _frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload
