"""Which exceptions can the warmpool library raise, and which of them are worth a retry?

The tree (httpx style)::

    WarmpoolError
     └ VastError                    base: .endpoint, .status, .code (the `error` field), .msg
        ├ VastAuthError             401/403: bad key or missing scope (never retry)
        ├ VastRateLimited           429; .retry_after in seconds when a Retry-After header was sent
        ├ VastServerError           5xx (retry)
        ├ VastTransportError        timeout, refused or reset connection (retry)
        ├ VastMalformedResponse     non-JSON body, or JSON of the wrong shape (retry)
        ├ VastRequestRejected       another 4xx, or a 200 with "success": false
        │  ├ VastOfferUnavailable   the offer is gone: search again
        │  └ VastCreateFailed       the rent failed; .new_contract: an instance that exists anyway
        └ VastNotFound              404 where the caller did not expect one

Every message is one line: endpoint, status, the provider's code and message (truncated). Secrets
never reach a message: the raiser passes them in `redact` and they are replaced before the
message is built, because a server may echo the API key or a token back in its error body.

`ErrorType` is the other half: the `type` of every `ApplicationError` that crosses a Temporal
boundary (an activity's failure as its workflow sees it, an update's refusal as its caller sees
it). Whoever raises and whoever matches (retry policies' `non_retryable_error_types`, workflows,
clients) use the member, never the string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

MAX_MSG_CHARS = 300
REDACTED = "[REDACTED]"

_BEARER_RE = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
_KEY_PARAM_RE = re.compile(r"(?i)(api_key=)[^\s&\"',;]+")
_SPACES_RE = re.compile(r"\s+")


def scrub(text: str, redact: Iterable[str] = ()) -> str:
    """Remove known secrets and anything shaped like a credential, then fold to one short line."""
    for secret in sorted((s for s in redact if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _BEARER_RE.sub(rf"\g<1>{REDACTED}", text)
    text = _KEY_PARAM_RE.sub(rf"\g<1>{REDACTED}", text)
    text = _SPACES_RE.sub(" ", text).strip()
    if len(text) > MAX_MSG_CHARS:
        text = text[: MAX_MSG_CHARS - 1] + "…"
    return text


class WarmpoolError(Exception):
    """Base of every error this library raises on purpose."""


class VastError(WarmpoolError):
    """A Vast.ai call did not give a usable answer."""

    def __init__(
        self,
        msg: str | None = None,
        *,
        endpoint: str,
        status: int | None = None,
        code: str | None = None,
        redact: Iterable[str] = (),
    ) -> None:
        secrets = tuple(redact)
        self.endpoint = endpoint
        self.status = status
        self.code = scrub(code, secrets) if code else None
        self.msg = scrub(msg, secrets) if msg else None
        parts = [endpoint]
        if status is not None:
            parts.append(f"HTTP {status}")
        if self.code:
            parts.append(self.code)
        line = " ".join(parts)
        super().__init__(f"{line}: {self.msg}" if self.msg else line)


class VastAuthError(VastError):
    """401/403: the key is wrong, deleted or lacks a scope; retrying cannot help."""


class VastRateLimited(VastError):
    """429. Vast.ai sends no Retry-After, so `retry_after` is usually None: back off yourself."""

    def __init__(
        self,
        msg: str | None = None,
        *,
        endpoint: str,
        status: int | None = 429,
        code: str | None = None,
        redact: Iterable[str] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(msg, endpoint=endpoint, status=status, code=code, redact=redact)
        self.retry_after = retry_after


class VastServerError(VastError):
    """5xx: the provider failed; the same call may work later."""


class VastTransportError(VastError):
    """No HTTP answer at all (timeout, refused, reset); the request may or may not have landed."""


class VastMalformedResponse(VastError):
    """An answer we cannot read: never guessed into an empty result (DESIGN: list incident)."""


class VastRequestRejected(VastError):
    """The provider understood the request and said no (4xx, or 200 with success false)."""


class VastOfferUnavailable(VastRequestRejected):
    """The offer was rented or withdrawn between search and rent: search again."""


class VastCreateFailed(VastRequestRejected):
    """The rent failed. If `new_contract` is set an instance exists anyway and must be destroyed."""

    def __init__(
        self,
        msg: str | None = None,
        *,
        endpoint: str,
        status: int | None = None,
        code: str | None = None,
        redact: Iterable[str] = (),
        new_contract: int | None = None,
    ) -> None:
        super().__init__(msg, endpoint=endpoint, status=status, code=code, redact=redact)
        self.new_contract = new_contract


class VastNotFound(VastError):
    """404 on an instance: the caller treats it as gone."""


_RETRYABLE: tuple[type[VastError], ...] = (
    VastRateLimited,
    VastServerError,
    VastTransportError,
    # A body we cannot parse is usually a proxy's error page; the next answer is likely sound.
    VastMalformedResponse,
)


def is_retryable(exc: BaseException) -> bool:
    """True when repeating the same call later may succeed; False for anything not known to be."""
    return isinstance(exc, _RETRYABLE)


class ErrorType(StrEnum):
    """Every `ApplicationError.type` of this project: the one table shared by raiser and matcher.

    The values are on the wire (failures in recorded histories, retry policies on the server):
    never change one. Vast.ai's are the library exception's class name (`activities/errors.py`).
    """

    # Vast.ai calls (`activities/errors.py`, from the exception tree above)
    VAST = "VastError"
    VAST_AUTH = "VastAuthError"
    VAST_RATE_LIMITED = "VastRateLimited"
    VAST_SERVER = "VastServerError"
    VAST_TRANSPORT = "VastTransportError"
    VAST_MALFORMED = "VastMalformedResponse"
    VAST_REJECTED = "VastRequestRejected"
    VAST_OFFER_UNAVAILABLE = "VastOfferUnavailable"
    VAST_CREATE_FAILED = "VastCreateFailed"
    VAST_NOT_FOUND = "VastNotFound"
    DESTROY_NOT_CONFIRMED = "DestroyNotConfirmed"
    """`vast.destroy`: the provider has not confirmed the instance is gone yet (retried)."""
    CONFIGURATION = "ConfigurationError"
    """A setting or a missing secret makes the call impossible: never retried."""
    # ComfyUI probes and warm-up (`activities/comfy.py`)
    NOT_READY = "NotReady"
    """Not ready yet: retried by the readiness policy (category BENIGN)."""
    PORTAL_UNAUTHORIZED = "PortalUnauthorized"
    """The portal refused the instance token (401/403): a configuration error, slot BLOCKED."""
    FIREWALL = "Firewall"
    """Every mapped candidate timed out: the host's firewall, not a slow boot."""
    WARMUP_FAILED = "WarmupFailed"
    # SSH log follower (`activities/ssh.py`)
    SSH_AUTH = "SshAuthError"
    # the pool's lease update
    NO_CAPACITY = "NoCapacity"
    """No READY slot to lease now (the `lease` update's refusal)."""


VAST_ERROR_TYPES: dict[type[VastError], ErrorType] = {
    VastError: ErrorType.VAST,
    VastAuthError: ErrorType.VAST_AUTH,
    VastRateLimited: ErrorType.VAST_RATE_LIMITED,
    VastServerError: ErrorType.VAST_SERVER,
    VastTransportError: ErrorType.VAST_TRANSPORT,
    VastMalformedResponse: ErrorType.VAST_MALFORMED,
    VastRequestRejected: ErrorType.VAST_REJECTED,
    VastOfferUnavailable: ErrorType.VAST_OFFER_UNAVAILABLE,
    VastCreateFailed: ErrorType.VAST_CREATE_FAILED,
    VastNotFound: ErrorType.VAST_NOT_FOUND,
}


def vast_error_type(exc: VastError) -> ErrorType:
    """The failure type of a Vast.ai error: its class's, or its nearest listed base class's."""
    return next(VAST_ERROR_TYPES[c] for c in type(exc).__mro__ if c in VAST_ERROR_TYPES)
