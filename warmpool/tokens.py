"""Is each service's token valid right now? Checks against Vast.ai, Hugging Face and Civitai.

A check tells three outcomes apart, because callers act differently on them: valid (`ok`), invalid
(`ok=False, transient=False`: an operator must rotate the token; do not retry) and unknown
(`transient=True`: network error, 5xx, 429; retry later). An unset token is `configured=False`.
Results are cached per (service, token fingerprint), so a rotated token is re-checked at once.
A `TokenCheck` never holds the token: `version` is the store's fingerprint, and any text taken
from an answer is redacted of the token before it is kept.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import httpx
from pydantic import Field

from warmpool.logging import redact
from warmpool.models import Model
from warmpool.secrets import SecretName, SecretStore, fingerprint

_DETAIL_MAX = 200
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


class TokenService(StrEnum):
    VAST = "vast"
    HF = "hf"
    CIVITAI = "civitai"


class TokenCheck(Model):
    """One check's outcome; safe to log, return from an activity and show in status."""

    service: TokenService
    ok: bool
    configured: bool
    detail: str
    identity: str | None = None
    checked_at: datetime
    version: str
    transient: bool = False


@dataclass(frozen=True)
class _Outcome:
    """What a service answered, before the validator stamps service, time and version."""

    ok: bool
    detail: str
    identity: str | None = None
    transient: bool = False


def _unknown(reason: str) -> _Outcome:
    return _Outcome(ok=False, detail=f"could not check: {reason}", transient=True)


def _error_text(response: httpx.Response) -> str:
    """The service's own error message when the body has one (HF and Civitai send `error`)."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "message", "msg", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return response.reason_phrase


def _classify_failure(response: httpx.Response) -> _Outcome:
    """401/403 mean a bad token; anything else means we do not know."""
    text = f"{response.status_code} {_error_text(response)}"
    if response.status_code in (401, 403):
        return _Outcome(ok=False, detail=text)
    return _unknown(text)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _hf_outcome(response: httpx.Response) -> _Outcome:
    if response.status_code != 200:
        return _classify_failure(response)
    body = _json_object(response)
    if body is None or not isinstance(body.get("name"), str):
        return _unknown("unexpected whoami-v2 answer")
    auth = body.get("auth")
    token_info = auth.get("accessToken") if isinstance(auth, dict) else None
    role = token_info.get("role") if isinstance(token_info, dict) else None
    kind = body.get("type", "user")
    return _Outcome(
        ok=True,
        identity=body["name"],
        detail=f"{kind} {body['name']}, role {role or 'unknown'}",
    )


def _civitai_outcome(response: httpx.Response) -> _Outcome:
    if response.status_code != 200:
        return _classify_failure(response)
    body = _json_object(response)
    if body is None or not isinstance(body.get("username"), str):
        return _unknown("unexpected /api/v1/me answer")
    username = body["username"]
    status = body.get("status", "active")
    if status == "banned":
        return _Outcome(ok=False, identity=username, detail=f"user {username} is banned")
    return _Outcome(
        ok=True, identity=username, detail=f"user {username}, tier {body.get('tier')}, {status}"
    )


class TokenValidator:
    """Checks tokens read from a `SecretStore` at call time; one instance per worker.

    `vast_check` is supplied by the caller (it wraps the Vast.ai client's current-user call and
    returns an identity); an exception whose class name contains "Auth" means the key is invalid,
    any other exception means the check could not be made.
    """

    def __init__(
        self,
        store: SecretStore,
        *,
        hf_base_url: str = "https://huggingface.co",
        civitai_base_url: str = "https://civitai.com",
        vast_check: Callable[[], Awaitable[str]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        cache_ttl: float = 300.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._hf = hf_base_url.rstrip("/")
        self._civitai = civitai_base_url.rstrip("/")
        self._vast_check = vast_check
        self._transport = transport
        self._cache_ttl = cache_ttl
        self._timeout = timeout
        self._clock = clock
        # service -> (expires_at, result); the result's version says which token it was for.
        self._cache: dict[TokenService, tuple[float, TokenCheck]] = {}
        # One check per service at a time: concurrent callers share the first one's result.
        self._locks = {service: asyncio.Lock() for service in TokenService}

    def __repr__(self) -> str:
        return f"TokenValidator(hf={self._hf!r}, civitai={self._civitai!r})"

    async def check(self, service: TokenService, *, force: bool = False) -> TokenCheck:
        async with self._locks[service]:
            token = self._store.get(SecretName(service.value))
            version = fingerprint(token)
            if not force and (cached := self._cache.get(service)) is not None:
                expires_at, result = cached
                if result.version == version and self._clock() < expires_at:
                    return result
            if token is None:
                return TokenCheck(
                    service=service,
                    ok=False,
                    configured=False,
                    detail="not configured",
                    checked_at=datetime.now(UTC),
                    version=version,
                )
            outcome = await self._run(service, token)
            result = TokenCheck(
                service=service,
                ok=outcome.ok,
                configured=True,
                detail=redact(outcome.detail, [token])[:_DETAIL_MAX],
                identity=outcome.identity,
                checked_at=datetime.now(UTC),
                version=version,
                transient=outcome.transient,
            )
            if result.transient:  # an unknown answer is worth asking again soon
                self._cache.pop(service, None)
            else:
                self._cache[service] = (self._clock() + self._cache_ttl, result)
            return result

    async def check_all(
        self, services: Iterable[TokenService], *, force: bool = False
    ) -> list[TokenCheck]:
        return list(await asyncio.gather(*(self.check(s, force=force) for s in services)))

    async def _run(self, service: TokenService, token: str) -> _Outcome:
        if not _HEADER_SAFE.fullmatch(token):
            # Caught here, not by httpx, whose error would quote the header value.
            return _Outcome(ok=False, detail="token has characters not allowed in an HTTP header")
        if service is TokenService.VAST:
            return await self._check_vast()
        if service is TokenService.HF:
            url, parse = f"{self._hf}/api/whoami-v2", _hf_outcome
        else:
            url, parse = f"{self._civitai}/api/v1/me", _civitai_outcome
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=self._timeout) as c:
                response = await c.get(url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            return _unknown(f"{type(exc).__name__}: {exc}")
        return parse(response)

    async def _check_vast(self) -> _Outcome:
        if self._vast_check is None:
            return _unknown("no Vast.ai checker configured")
        try:
            identity = await self._vast_check()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if "Auth" in type(exc).__name__:
                return _Outcome(ok=False, detail=text)
            return _unknown(text)
        return _Outcome(ok=True, identity=identity, detail=f"user {identity}")


# ---- the token watch's records (`workflows/token_watch.py`, `warmpool/clients/token_watch.py`) --


class TokenHealth(StrEnum):
    """What a check means for an operator; `UNKNOWN` is a check that could not be made."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"
    UNSET = "unset"


def health_of(check: TokenCheck) -> TokenHealth:
    if not check.configured:
        return TokenHealth.UNSET
    if check.ok:
        return TokenHealth.VALID
    return TokenHealth.UNKNOWN if check.transient else TokenHealth.INVALID


class ServiceRecord(Model):
    """The last check of one service and when its health last changed."""

    service: TokenService
    required: bool
    health: TokenHealth
    since: datetime
    last: TokenCheck

    @property
    def problem(self) -> bool:
        """A required token that is not valid, or any token that is set but rejected."""
        return self.health == TokenHealth.INVALID or (
            self.required and self.health != TokenHealth.VALID
        )


class TokenWatchState(Model):
    """Everything a run carries across continue-as-new."""

    records: dict[TokenService, ServiceRecord] = Field(default_factory=dict)
    rounds: int = 0
    last_round_at: datetime | None = None
    next_check_at: datetime | None = None
    last_error: str | None = None
    requests: int = 0
    """`check_now` signals received."""
    served: int = 0
    """The value of `requests` when the last completed round started: a caller that saw
    `requests >= n` after signalling knows its request is served once `served >= n`."""


class TokenWatchInput(Model):
    """The `TokenWatchWorkflow`'s input, which doubles as its continue-as-new carrier."""

    interval: timedelta = Field(gt=timedelta(0))
    required: list[TokenService] = Field(default_factory=list)
    services: list[TokenService] = Field(default_factory=lambda: list(TokenService))
    state: TokenWatchState | None = None


class TokenWatchStatus(Model):
    """The `status` query's answer, services in `input.services` order."""

    services: list[ServiceRecord]
    interval: timedelta
    rounds: int
    last_round_at: datetime | None
    next_check_at: datetime | None
    last_error: str | None
    requests: int
    served: int
