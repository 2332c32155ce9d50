"""Small test helpers: unique task queues, `assert_eventually` (the one poll-until), waiting on a
slot's state, and a stranger."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from warmpool.clients import slot as slot_client
from warmpool.models import SlotState, SlotStatus

T = TypeVar("T")


def new_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"


async def assert_eventually(
    probe: Callable[[], Awaitable[T]],
    predicate: Callable[[T], object] = bool,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - how long to poll, reported in the failure
    interval: float = 0.05,
    describe: str = "condition",
) -> T:
    """Call `probe` every `interval` seconds until `predicate` holds for its value (by default:
    the value is truthy), and return that value; after `timeout` seconds (real time) fail with
    an AssertionError that shows the last value. The one poll-until of the tests."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{describe} not reached within {timeout:g} s; last: {value!r}")
        await asyncio.sleep(interval)


async def wait_status(
    env: WorkflowEnvironment,
    handle: WorkflowHandle,  # type: ignore[type-arg]
    predicate: Callable[[SlotStatus], bool],
    *,
    step: timedelta = timedelta(seconds=10),
    attempts: int = 400,
    real_pause: float = 0.02,
) -> SlotStatus:
    """Query the slot's status until `predicate` holds (`assert_eventually`, for about
    `attempts` polls); on the time-skipping server the clock skips `step` between two polls."""
    polls = 0

    async def status() -> SlotStatus:
        nonlocal polls
        if polls and env.supports_time_skipping:
            await env.sleep(step)
        polls += 1
        return await slot_client.query_status(handle)

    return await assert_eventually(
        status,
        predicate,
        timeout=attempts * (real_pause + 0.03),
        interval=real_pause,
        describe="slot condition",
    )


def in_state(*states: SlotState) -> Callable[[SlotStatus], bool]:
    return lambda s: s.state in states


# --- a stranger next to our instances --------------------------------------------------------

STRANGER_STATS = {
    "system": {"os": "posix", "comfyui_version": "0.0.0-stranger", "argv": ["main.py"]},
    "devices": [],
}


@dataclass(frozen=True)
class StrangerRequest:
    method: str
    path: str
    authorization: bool
    """An Authorization header, a `token` query parameter or a `token` cookie was present."""


@dataclass
class Stranger:
    """Another tenant's ComfyUI on a shared host's public IP: healthy, un-gated, recording all.

    It answers `/system_stats` (and anything else) with 200 to every request, with or without
    a token, so a prober that guesses its address would take it for a ready instance.
    """

    host: str
    port: int
    requests: list[StrangerRequest] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def tokened(self) -> list[StrangerRequest]:
        return [r for r in self.requests if r.authorization]

    def assert_no_token(self) -> None:
        tokened = self.tokened()
        assert not tokened, f"the stranger at {self.url} received a token: {tokened}"


def random_loopback() -> str:
    """A loopback address other than 127.0.0.1 (Linux routes all of 127.0.0.0/8 to `lo`), so
    servers can bind well-known ports there whatever listens on 127.0.0.1."""
    pick = random.SystemRandom()
    return f"127.{pick.randint(1, 254)}.{pick.randint(1, 254)}.{pick.randint(2, 254)}"


@contextmanager
def running_stranger(host: str | None = None, port: int = 8188) -> Iterator[Stranger]:
    """A Stranger bound on `host:port` (default: a fresh random loopback address) in a thread."""
    for _ in range(20):
        address = host or random_loopback()
        stranger = Stranger(address, port)
        try:
            server = ThreadingHTTPServer((address, port), _stranger_handler(stranger))
        except OSError:
            if host is not None:
                raise
            continue
        break
    else:
        raise RuntimeError(f"no free loopback address for a stranger on port {port}")
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="stranger", daemon=True)
    thread.start()
    try:
        yield stranger
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _stranger_handler(stranger: Stranger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            cookies = self.headers.get("Cookie", "")
            stranger.requests.append(
                StrangerRequest(
                    method=self.command,
                    path=urlsplit(self.path).path,
                    authorization="Authorization" in self.headers
                    or "token" in query
                    or "token=" in cookies,
                )
            )
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            data = STRANGER_STATS if self.path.startswith("/system_stats") else {}
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
