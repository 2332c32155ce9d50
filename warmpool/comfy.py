"""How do we talk to one ComfyUI server: readiness, keepalive, warm-up prompt, post-lease clean-up?

The same client serves a bare ComfyUI and one behind Vast.ai's Caddy "Instance Portal", which
wants `Authorization: Bearer <instance token>` and answers for ComfyUI while it is not up yet.
Shapes follow docs/reference/comfyui-api.md. Every failure is a `ComfyError`:

    ComfyError
    ├── ComfyUnreachable    no HTTP answer at all (refused, reset, timed out)
    ├── ComfyNotReady       the portal answers, ComfyUI behind it is not up (502-504, placeholder)
    ├── ComfyUnauthorized   401/403: the instance token is wrong (configuration, do not loop)
    ├── ComfyBadResponse    an answer ComfyUI would not give (status, not JSON, wrong shape)
    └── ComfyPromptFailed   ComfyUI rejected the prompt (400) or it failed while executing
        └── ComfyPromptTimeout  it did not finish in time

No message ever contains the token: messages carry method, path, status and ComfyUI's own error
fields, never raw response bodies or request headers.

The environment check reads what ComfyUI has loaded: `node_classes` (`GET /object_info`, ~500 KB:
only its top-level keys are kept) and `model_files` (`GET /models/<folder>`). Both read the answer
in chunks up to a cap, so a wrong answer cannot make a worker hold gigabytes.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from contextlib import suppress
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

PLACEHOLDER_HEADER = "X-Portal-Placeholder"
NOT_READY_STATUSES = frozenset({502, 503, 504})
UNAUTHORIZED_STATUSES = frozenset({401, 403})
CANCEL_TIMEOUT_S = 5.0
OBJECT_INFO_TIMEOUT_S = 30.0
"""`/object_info` builds the description of every node class on each call: on a GPU box with
many custom node packs it takes seconds, far more than `/system_stats`."""
OBJECT_INFO_MAX_BYTES = 64 * 1024 * 1024
"""~500 KB on a stock ComfyUI (478 classes); a few MB with many packs. Anything past this cap is
not an answer to read."""
MODELS_MAX_BYTES = 8 * 1024 * 1024
_MAX_MESSAGE = 500

# After a lease: drop pending work first (so interrupt does not just start the next item), stop
# the running prompt, release models and VRAM, and forget the previous holder's history.
_CLEAN_CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("/queue", {"clear": True}),
    ("/interrupt", {}),
    ("/free", {"unload_models": True, "free_memory": True}),
    ("/history", {"clear": True}),
)


class ComfyError(Exception):
    """Base of every ComfyUI client failure; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message[:_MAX_MESSAGE])
        self.status = status


class ComfyUnreachable(ComfyError):
    """No HTTP answer: nothing listens, the link dropped, or the answer took too long."""


class ComfyNotReady(ComfyError):
    """Something answers for ComfyUI (the portal) but ComfyUI itself is not up yet."""


class ComfyUnauthorized(ComfyError):
    """The portal refused our token: retrying cannot help, the token or its secret is wrong."""


class ComfyBadResponse(ComfyError):
    """An answer that does not look like ComfyUI's: wrong status, not JSON, or wrong shape."""


class ComfyPromptFailed(ComfyError):
    """A prompt was rejected at validation or failed while executing.

    `error_type` is ComfyUI's classification: the 400 answer's `error.type` (e.g.
    `prompt_outputs_failed_validation`), `execution_error`, `execution_interrupted` or `timeout`.
    `exception_message` is the 400's `error.message` or the execution error's message.
    """

    def __init__(
        self,
        message: str,
        *,
        prompt_id: str | None = None,
        error_type: str | None = None,
        node_type: str | None = None,
        exception_message: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.prompt_id = prompt_id
        self.error_type = error_type
        self.node_type = node_type
        self.exception_message = exception_message


class ComfyPromptTimeout(ComfyPromptFailed):
    """The prompt was queued but had not finished when the caller's deadline passed."""


def bearer_headers(token: str | None) -> dict[str, str]:
    """The portal's auth header; a bare ComfyUI ignores it, so send it whenever we have a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def tls_context() -> ssl.SSLContext:
    """The CA bundle, loaded once per worker and given to every client it makes (`tls=`).

    An httpx client built without one loads the bundle into an SSL context of its own
    (~0.7 MB, and CPU): one per READY slot's keepalive was most of a 1,000-slot worker's
    memory. Each slot still gets a small client of its own (~4 KB): one connection pool
    shared by a thousand instances would scan all its connections on every request.
    """
    return httpx.create_ssl_context(trust_env=False)


def new_client(tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """A client that ignores proxy settings: a proxy from the environment would see the token
    and would make a ComfyUI answer prove nothing about the direct path being probed."""
    return httpx.AsyncClient(trust_env=False, verify=tls if tls is not None else True)


def base_url(host: str, port: int) -> str:
    """`http://host:port`, bracketing IPv6 literals."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_portal(response: httpx.Response, what: str) -> None:
    """Raise for the answers that mean "not ComfyUI yet" or "wrong token", whatever the endpoint.

    The placeholder header wins over the status: through a Cloudflare tunnel it comes with a 200.
    """
    status = response.status_code
    if status in UNAUTHORIZED_STATUSES:
        raise ComfyUnauthorized(
            f"{what}: HTTP {status}, the portal rejected the instance token", status=status
        )
    if response.headers.get(PLACEHOLDER_HEADER, "").strip().lower() == "true":
        raise ComfyNotReady(
            f"{what}: HTTP {status} portal placeholder, ComfyUI still starting", status=status
        )
    if status in NOT_READY_STATUSES:
        raise ComfyNotReady(f"{what}: HTTP {status}, ComfyUI not up behind a proxy", status=status)


def read_json(response: httpx.Response, what: str) -> Any:
    """The JSON body, or ComfyBadResponse naming the content type (never echoing the body)."""
    try:
        return response.json()
    except ValueError:
        raise ComfyBadResponse(
            f"{what}: {_describe(response)}, not JSON", status=response.status_code
        ) from None


def _keys_only(pairs: list[tuple[str, Any]]) -> list[str]:
    """Each JSON object becomes the list of its keys as soon as it is parsed, so its values are
    dropped at once: parsing `/object_info` never holds the whole tree of Python objects."""
    return [key for key, _ in pairs]


def read_object_info_classes(body: bytes, what: str = "GET /object_info") -> set[str]:
    """The node class names in an `/object_info` answer: the keys of its top-level object."""
    if not body.lstrip().startswith(b"{"):
        raise ComfyBadResponse(f"{what}: not a JSON object ({len(body)} bytes)", status=200)
    try:
        keys = json.loads(body, object_pairs_hook=_keys_only)
    except ValueError:
        raise ComfyBadResponse(f"{what}: not JSON ({len(body)} bytes)", status=200) from None
    if not isinstance(keys, list):  # pragma: no cover - a JSON object always gives the hook's list
        raise ComfyBadResponse(f"{what}: not a JSON object", status=200)
    return set(keys)


def read_model_files(response: httpx.Response, what: str) -> set[str]:
    """The file names of a `/models/<folder>` answer (a JSON list of strings)."""
    _expect_ok(response, what)
    data = read_json(response, what)
    if not isinstance(data, list):
        raise ComfyBadResponse(f"{what}: not a JSON list of file names", status=200)
    return {item for item in data if isinstance(item, str)}


def read_system_stats(response: httpx.Response, what: str = "GET /system_stats") -> dict[str, Any]:
    """Readiness in one place: only a 200 JSON object with a `system` key is ComfyUI being up."""
    check_portal(response, what)
    _expect_ok(response, what)
    data = read_json(response, what)
    if not isinstance(data, dict) or "system" not in data:
        raise ComfyBadResponse(f"{what}: JSON without a 'system' key", status=200)
    return data


class ComfyClient:
    """An async client for one ComfyUI base URL; inject `client` (e.g. a MockTransport) in tests,
    or `tls` (the worker's `tls_context()`) for the client it makes itself."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._client = client if client is not None else new_client(tls)
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"ComfyClient(base_url={self.base_url!r}, token={'set' if self._token else None})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def system_stats(self, http_timeout: float | None = None) -> dict[str, Any]:
        """`GET /system_stats`: the readiness probe, raising the reason ComfyUI is not usable."""
        response = await self._request("GET", "/system_stats", http_timeout=http_timeout)
        return read_system_stats(response)

    async def ping(self, timeout: float) -> bool:  # noqa: ASYNC109 - the HTTP timeout of one beat
        """Keepalive: True only when ComfyUI itself answers; any failure is just a missed beat."""
        try:
            await self.system_stats(http_timeout=timeout)
        except ComfyError:
            return False
        return True

    async def node_classes(self, http_timeout: float = OBJECT_INFO_TIMEOUT_S) -> set[str]:
        """`GET /object_info`: the node classes ComfyUI imported (a pack that failed to import
        has none there). Only the top-level keys are kept; the answer is read up to a cap."""
        what = "GET /object_info"
        response = await self._get_capped(
            "/object_info", max_bytes=OBJECT_INFO_MAX_BYTES, http_timeout=http_timeout
        )
        _expect_ok(response, what)
        return read_object_info_classes(response.content, what)

    async def model_files(self, folder: str, http_timeout: float | None = None) -> set[str] | None:
        """`GET /models/<folder>`: the files ComfyUI lists in that models folder, or None when
        ComfyUI has no such folder (404, e.g. a legacy name such as `unet`)."""
        path = f"/models/{quote(folder, safe='')}"
        what = f"GET {path}"
        response = await self._get_capped(
            path, max_bytes=MODELS_MAX_BYTES, http_timeout=http_timeout
        )
        if response.status_code == 404:
            return None
        return read_model_files(response, what)

    async def queue_prompt(
        self, graph: dict[str, Any], *, client_id: str, prompt_id: str | None = None
    ) -> str:
        """`POST /prompt`; returns the prompt id, or raises ComfyPromptFailed on a 400 rejection."""
        what = "POST /prompt"
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id}
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        response = await self._request("POST", "/prompt", json_body=body)
        if response.status_code == 400:
            raise _rejection(read_json(response, what))
        _expect_ok(response, what)
        data = read_json(response, what)
        queued_id = data.get("prompt_id") if isinstance(data, dict) else None
        if not isinstance(queued_id, str) or not queued_id:
            raise ComfyBadResponse(f"{what}: answer without a prompt_id", status=200)
        return queued_id

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """`GET /history/{id}`: the entry once finished, None while pending or running (`{}`)."""
        what = "GET /history/{id}"
        response = await self._request("GET", f"/history/{quote(prompt_id, safe='')}")
        _expect_ok(response, what)
        data = read_json(response, what)
        if not isinstance(data, dict):
            raise ComfyBadResponse(f"{what}: not a JSON object", status=200)
        if not data:
            return None
        entry = data.get(prompt_id)
        if not isinstance(entry, dict):
            raise ComfyBadResponse(f"{what}: answer without an entry for the prompt", status=200)
        return entry

    async def run_prompt(
        self,
        graph: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - a deadline, also used to cancel the prompt on expiry
        poll_interval: float = 0.5,
    ) -> float:
        """Warm-up: queue `graph`, poll its history until it finishes; returns the seconds taken.

        On timeout the prompt is removed from the queue and interrupted (best effort), so a
        retried warm-up does not queue behind the one that gave up.
        """
        prompt_id = str(uuid.uuid4())
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                prompt_id = await self.queue_prompt(
                    graph, client_id=f"warmpool-{prompt_id[:8]}", prompt_id=prompt_id
                )
                while True:
                    entry = await self.history(prompt_id)
                    if entry is not None:
                        break
                    await asyncio.sleep(poll_interval)
        except TimeoutError:
            await self._cancel_prompt(prompt_id)
            raise ComfyPromptTimeout(
                f"prompt {prompt_id} did not finish within {timeout:g}s",
                prompt_id=prompt_id,
                error_type="timeout",
            ) from None
        _raise_if_failed(prompt_id, entry)
        return time.monotonic() - started

    async def clean(self) -> None:
        """After a lease: clear the queue, interrupt, free models and memory, clear history.

        Each call is idempotent, so a retry after a partial failure simply repeats them all.
        """
        for path, body in _CLEAN_CALLS:
            response = await self._request("POST", path, json_body=body)
            _expect_ok(response, f"POST {path}")

    async def _cancel_prompt(self, prompt_id: str) -> None:
        calls = (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id}))
        for path, body in calls:
            with suppress(ComfyError):
                await self._request("POST", path, json_body=body, http_timeout=CANCEL_TIMEOUT_S)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        http_timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request; raise for no answer, a wrong token, or ComfyUI not up yet."""
        what = f"{method} {path}"
        seconds = self.timeout if http_timeout is None else http_timeout
        try:
            response = await self._client.request(
                method,
                self.base_url + path,
                json=json_body,
                headers=bearer_headers(self._token),
                timeout=seconds,
            )
        # `from None`: httpx exceptions hold the request, whose headers hold the token.
        except httpx.TimeoutException:
            raise ComfyUnreachable(f"{what}: no answer within {seconds:g}s") from None
        except httpx.TransportError as exc:
            raise ComfyUnreachable(f"{what}: {type(exc).__name__}: {exc}") from None
        check_portal(response, what)
        return response

    async def _get_capped(
        self, path: str, *, max_bytes: int, http_timeout: float | None = None
    ) -> httpx.Response:
        """`GET path`, its body read in chunks and refused past `max_bytes`; returned as a read
        response (decoded body, so `.content` and `.json()` work). Raises as `_request` does."""
        what = f"GET {path}"
        seconds = self.timeout if http_timeout is None else http_timeout
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._client.stream(
                "GET", self.base_url + path, headers=bearer_headers(self._token), timeout=seconds
            ) as response:
                check_portal(response, what)
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ComfyBadResponse(
                            f"{what}: answer larger than {max_bytes} bytes",
                            status=response.status_code,
                        )
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise ComfyUnreachable(f"{what}: no answer within {seconds:g}s") from None
        except httpx.TransportError as exc:
            raise ComfyUnreachable(f"{what}: {type(exc).__name__}: {exc}") from None
        except httpx.DecodingError:
            raise ComfyBadResponse(f"{what}: an answer that does not decode") from None
        headers = [
            (name, value)
            for name, value in response.headers.items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks))


def _expect_ok(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise ComfyBadResponse(
            f"{what}: unexpected {_describe(response)}", status=response.status_code
        )


def _describe(response: httpx.Response) -> str:
    """`HTTP 500 text/plain (52 bytes)`: enough to diagnose, without echoing the body."""
    content_type = response.headers.get("content-type", "no content type").split(";")[0]
    return f"HTTP {response.status_code} {content_type} ({len(response.content)} bytes)"


def _rejection(data: Any) -> ComfyPromptFailed:
    """A 400 from POST /prompt: `{"error": {"type", "message", "details"}, "node_errors": {}}`."""
    data = data if isinstance(data, dict) else {}
    error = data.get("error")
    if isinstance(error, dict):
        error_type, message = error.get("type"), error.get("message")
        details = error.get("details")
    else:
        error_type, message, details = None, error, None
    text = f"prompt rejected: {error_type or 'unknown'}: {message or 'no message'}"
    if details:
        text += f" ({details})"
    node_errors = _node_errors(data.get("node_errors"))
    if node_errors:
        text += f"; {node_errors}"
    return ComfyPromptFailed(
        text,
        error_type=str(error_type) if error_type else None,
        exception_message=str(message) if message else None,
        status=400,
    )


def _node_errors(node_errors: Any) -> str:
    """One line per failing node: `node 2 (ImageInvert): required_input_missing: ... [image]`."""
    if not isinstance(node_errors, dict):
        return ""
    lines = []
    for node_id, node in node_errors.items():
        if not isinstance(node, dict):
            continue
        for error in node.get("errors") or []:
            if isinstance(error, dict):
                line = f"node {node_id} ({node.get('class_type')}): {error.get('type')}: "
                line += f"{error.get('message')}"
                if error.get("details"):
                    line += f" [{error['details']}]"
                lines.append(line)
    return "; ".join(lines)


def _raise_if_failed(prompt_id: str, entry: dict[str, Any]) -> None:
    """Read a finished history entry: success returns, an error or interrupt raises."""
    status = entry.get("status")
    status_str = status.get("status_str") if isinstance(status, dict) else None
    if status_str == "success":
        return
    if status_str != "error":
        raise ComfyBadResponse(f"prompt {prompt_id}: unexpected status_str {str(status_str)!r}")
    messages = status.get("messages") if isinstance(status, dict) else None
    for message in messages or []:
        if not (isinstance(message, list | tuple) and len(message) == 2):
            continue
        kind, data = message
        if kind not in ("execution_error", "execution_interrupted") or not isinstance(data, dict):
            continue
        node_type, node_id = data.get("node_type"), data.get("node_id")
        if kind == "execution_interrupted":
            raise ComfyPromptFailed(
                f"prompt {prompt_id} was interrupted at node {node_id} ({node_type})",
                prompt_id=prompt_id,
                error_type=kind,
                node_type=node_type,
            )
        exception_message = str(data.get("exception_message") or "").strip()
        raise ComfyPromptFailed(
            f"prompt {prompt_id} failed in node {node_id} ({node_type}): "
            f"{data.get('exception_type')}: {exception_message}",
            prompt_id=prompt_id,
            error_type=kind,
            node_type=node_type,
            exception_message=exception_message,
        )
    raise ComfyPromptFailed(
        f"prompt {prompt_id} failed without an execution_error message",
        prompt_id=prompt_id,
        error_type="execution_error",
    )
