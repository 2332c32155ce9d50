"""How do we follow an instance's log files over SSH, and resume without losing or repeating a line?

`LogFollower` reads each file over SFTP from a byte offset and emits complete lines only. The
`LogCursor` it returns holds, per file, the offset just past the last emitted line: a partial last
line is read again on the next poll, so the cursor alone is enough to resume anywhere (a new
follower, another worker, a retried activity). A file that shrank was truncated or recreated (a
restarted ComfyUI truncates its log): reading starts again at 0 and the file's *epoch* goes up, so
`(epoch, offset)` orders every line ever emitted from a path.

Dead connections: paramiko's transport keepalive only keeps NAT mappings open (nothing answers
it), so liveness comes from the SFTP channel's read timeout of `keepalive_interval_s *
keepalive_max_missed`: a poll that gets no answer for that long fails with `SshConnectError`.

Exceptions::

    SshError              anything this module raises
    ├── SshConnectError   cannot connect, connection lost or silent: retrying may help
    └── SshAuthError      key unusable or rejected, host key rejected: retrying cannot help

No message ever contains key material. Blocking paramiko calls run in `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import paramiko
import structlog

from warmpool.models import Model

_log = structlog.get_logger(__name__)

READ_CHUNK_BYTES = 256 * 1024
"""Most bytes read from one file per poll; the rest comes on the next poll."""

MAX_LINE_CHARS = 2000
"""Longer lines are shortened in `LogLine.text` (offsets stay exact): they travel in signals."""

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_NEVER = re.compile(r"(?!)")


class SshError(Exception):
    """Base of every error this module raises."""


class SshConnectError(SshError):
    """The connection could not be made, dropped, or stopped answering: a retry reconnects."""


class SshAuthError(SshError):
    """The key cannot be used or was rejected, or the host key was: a retry cannot help."""


class LogCursor(Model):
    """How far each file has been delivered: per path, its epoch and the offset past the last line.

    Heartbeat this after the lines before it were delivered, and resume from it.
    """

    offsets: dict[str, int] = {}
    epochs: dict[str, int] = {}

    def position(self, path: str) -> tuple[int, int]:
        """`(epoch, offset)` of `path`; a path never seen starts at `(0, 0)`."""
        return self.epochs.get(path, 0), self.offsets.get(path, 0)

    def at(self, path: str, epoch: int, offset: int) -> LogCursor:
        """A copy with `path` moved to `(epoch, offset)`."""
        return LogCursor(
            offsets={**self.offsets, path: offset}, epochs={**self.epochs, path: epoch}
        )

    def after(self, line: LogLine) -> LogCursor:
        """A copy that counts `line` (and everything before it in its file) as delivered."""
        return self.at(line.path, line.epoch, line.end)


class LogLine(Model):
    """One complete line: `offset` is its first byte, `end` the byte after its newline."""

    path: str
    epoch: int
    offset: int
    end: int
    text: str


def match_fatal(line: str, patterns: Iterable[str]) -> str | None:
    """The first pattern found in `line` (case-insensitive substring, or regex), else None.

    A pattern is tried as a plain substring first, so "HTTP Error 401 (auth)" means what it says
    even though parentheses are regex syntax.
    """
    folded = line.casefold()
    for pattern in patterns:
        if pattern.casefold() in folded or _regex(pattern).search(line):
            return pattern
    return None


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error:
        return _NEVER


def load_private_key(pem: str) -> paramiko.PKey:
    """Parse an unencrypted Ed25519, RSA or ECDSA private key (OpenSSH or PEM format).

    Raises `SshAuthError` without a trace of the key: neither its text nor paramiko's parse error.
    """
    for key_class in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            key: paramiko.PKey = key_class.from_private_key(io.StringIO(pem))
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
        return key
    raise SshAuthError(
        "the SSH private key could not be parsed "
        "(expected an unencrypted Ed25519, RSA or ECDSA key)"
    )


@dataclass(frozen=True)
class _Connection:
    client: paramiko.SSHClient
    sftp: paramiko.SFTPClient


class LogFollower:
    """Follows log files on one host: `poll()` connects when needed and returns the new lines.

    A failed poll closes the connection and raises; the next poll reconnects. Backoff between
    attempts is the caller's job (the activity leaves it to its retry policy).
    """

    def __init__(
        self,
        host: str,
        port: int,
        private_key_pem: str,
        paths: Sequence[str],
        *,
        username: str = "root",
        host_key_policy: paramiko.MissingHostKeyPolicy | None = None,
        keepalive_interval_s: float = 15.0,
        keepalive_max_missed: int = 3,
        connect_timeout_s: float = 20.0,
        read_chunk_bytes: int = READ_CHUNK_BYTES,
    ) -> None:
        """`host_key_policy` defaults to AutoAdd: a Vast.ai instance's host key is new every rental.

        Raises `SshAuthError` at once when the key cannot be parsed.
        """
        self.host = host
        self.port = port
        self.username = username
        self.paths = tuple(paths)
        self._key = load_private_key(private_key_pem)
        self._host_key_policy = host_key_policy or paramiko.AutoAddPolicy()
        self._keepalive_interval_s = keepalive_interval_s
        self._silence_limit_s = keepalive_interval_s * keepalive_max_missed
        self._connect_timeout_s = connect_timeout_s
        self._read_chunk_bytes = read_chunk_bytes
        self._conn: _Connection | None = None

    def __repr__(self) -> str:
        return f"LogFollower({self.username}@{self.host}:{self.port}, paths={list(self.paths)})"

    @property
    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._conn is not None and _is_active(self._conn.client)

    async def connect(self) -> None:
        """Open the SSH connection and the SFTP session, unless they are up already."""
        if self.connected:
            return
        await self.close()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(self._host_key_policy)
        try:
            # paramiko has no timeout on a subsystem request: the deadline here bounds it all.
            sftp = await asyncio.wait_for(
                asyncio.to_thread(self._open, client), self._connect_timeout_s
            )
        except TimeoutError:
            await asyncio.to_thread(client.close)
            raise SshConnectError(
                f"{self.where} did not complete the SSH/SFTP handshake "
                f"within {self._connect_timeout_s:g}s"
            ) from None
        except BaseException:
            await asyncio.to_thread(client.close)
            raise
        self._conn = _Connection(client, sftp)
        _log.debug("ssh connected", target=self.where)

    async def close(self) -> None:
        """Close the connection (idempotent); a blocked read in another thread fails at once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.client.close)

    async def poll(self, cursor: LogCursor) -> tuple[list[LogLine], LogCursor]:
        """The complete lines past `cursor` in every path, in file order, and the cursor after them.

        A missing file yields nothing yet. Raises `SshConnectError` or `SshAuthError`; the
        connection is closed then and the next poll reconnects.
        """
        await self.connect()
        assert self._conn is not None
        sftp = self._conn.sftp
        try:
            return await asyncio.to_thread(self._read_all, sftp, cursor)
        except TimeoutError:
            await self.close()
            raise SshConnectError(
                f"{self.where} sent nothing for {self._silence_limit_s:g}s "
                "(keepalive interval x max missed): connection presumed dead"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            await self.close()
            raise SshConnectError(
                f"reading logs from {self.where} failed: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            await self.close()
            raise

    def _open(self, client: paramiko.SSHClient) -> paramiko.SFTPClient:
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.username,
                pkey=self._key,
                timeout=self._connect_timeout_s,
                banner_timeout=self._connect_timeout_s,
                auth_timeout=self._connect_timeout_s,
                channel_timeout=self._connect_timeout_s,
                look_for_keys=False,
                allow_agent=False,
            )
            transport = client.get_transport()
            if transport is None:
                raise SshConnectError(f"{self.where}: no SSH transport after connect")
            transport.set_keepalive(max(1, round(self._keepalive_interval_s)))
            channel = transport.open_session(timeout=self._connect_timeout_s)
            channel.settimeout(self._silence_limit_s)
            channel.invoke_subsystem("sftp")
            return paramiko.SFTPClient(channel)
        except paramiko.BadHostKeyException:
            raise SshAuthError(f"{self.where} presented an unexpected host key") from None
        except paramiko.AuthenticationException:
            raise SshAuthError(f"{self.where} rejected the SSH key") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SshConnectError(
                f"cannot connect to {self.where}: {type(exc).__name__}: {exc}"
            ) from exc

    def _read_all(
        self, sftp: paramiko.SFTPClient, cursor: LogCursor
    ) -> tuple[list[LogLine], LogCursor]:
        lines: list[LogLine] = []
        for path in self.paths:
            epoch, offset = cursor.position(path)
            new_lines, epoch, offset = self._read_path(sftp, path, epoch, offset)
            lines.extend(new_lines)
            cursor = cursor.at(path, epoch, offset)
        return lines, cursor

    def _read_path(
        self, sftp: paramiko.SFTPClient, path: str, epoch: int, offset: int
    ) -> tuple[list[LogLine], int, int]:
        try:
            size = sftp.stat(path).st_size or 0
        except FileNotFoundError:
            return [], epoch, offset
        if size < offset:
            _log.warning("log file shrank: reading it again from the start", path=path, size=size)
            epoch, offset = epoch + 1, 0
        if size == offset:
            return [], epoch, offset
        with sftp.open(path, "rb") as remote:
            remote.seek(offset)
            data = remote.read(min(size - offset, self._read_chunk_bytes))
        force = len(data) >= self._read_chunk_bytes
        lines = split_lines(data, path=path, epoch=epoch, start=offset, force=force)
        return lines, epoch, (lines[-1].end if lines else offset)


def split_lines(data: bytes, *, path: str, epoch: int, start: int, force: bool) -> list[LogLine]:
    """The complete lines of `data` (read at byte `start`); a trailing partial line is left out.

    With `force` (the read filled its whole chunk) a chunk without any newline is emitted as one
    line, or a huge line (a progress bar without newlines) would stall the file forever.
    """
    lines: list[LogLine] = []
    pos = 0
    while (newline := data.find(b"\n", pos)) >= 0:
        lines.append(_line(data[pos:newline], path, epoch, start + pos, start + newline + 1))
        pos = newline + 1
    if force and not lines and data:
        lines.append(_line(data, path, epoch, start, start + len(data)))
    return lines


def _line(raw: bytes, path: str, epoch: int, offset: int, end: int) -> LogLine:
    """Decode as a terminal would show it: colours stripped, only the last carriage-return frame."""
    text = _ANSI_ESCAPE.sub("", raw.decode("utf-8", errors="replace")).rstrip("\r")
    text = text.rsplit("\r", 1)[-1]
    if len(text) > MAX_LINE_CHARS:
        text = text[: MAX_LINE_CHARS - 1] + "…"
    return LogLine(path=path, epoch=epoch, offset=offset, end=end, text=text)


def _is_active(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()
