"""How does a library error become a Temporal failure? The one mapping, used by every activity.

- auth failures and permanent provider answers: non-retryable, with a `type` the workflow matches
  (`warmpool.errors.ErrorType`, the one table of failure types);
- a 429: retryable, `next_retry_delay` from Retry-After when the provider sent one, otherwise a
  jittered delay (Vast.ai sends none);
- server errors, timeouts, malformed answers: retryable (the retry policy backs off).
Messages are the library's, which never carry a secret.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from temporalio.exceptions import ApplicationError

from warmpool.errors import (
    VastAuthError,
    VastError,
    VastRateLimited,
    VastRequestRejected,
    vast_error_type,
)

RATE_LIMIT_BASE_S = 2.0
RATE_LIMIT_MAX_S = 30.0


def rate_limit_delay(retry_after: float | None, attempt: int) -> timedelta:
    """Honour Retry-After when present; otherwise exponential backoff with full jitter."""
    if retry_after is not None and retry_after >= 0:
        return timedelta(seconds=retry_after)
    cap = min(RATE_LIMIT_MAX_S, RATE_LIMIT_BASE_S * 2 ** max(0, attempt - 1))
    return timedelta(seconds=random.uniform(RATE_LIMIT_BASE_S / 2, cap))


def to_application_error(exc: VastError, attempt: int) -> ApplicationError:
    """Translate one Vast.ai error into the failure the workflow sees."""
    name = vast_error_type(exc)
    if isinstance(exc, VastRateLimited):
        return ApplicationError(
            str(exc), type=name, next_retry_delay=rate_limit_delay(exc.retry_after, attempt)
        )
    if isinstance(exc, VastRequestRejected | VastAuthError):
        # includes VastOfferUnavailable and VastCreateFailed: the workflow decides what next
        return ApplicationError(str(exc), type=name, non_retryable=True)
    return ApplicationError(str(exc), type=name)


@contextmanager
def vast_errors(attempt: int) -> Iterator[None]:
    """Wrap a block of Vast.ai calls so every library error leaves as an ApplicationError."""
    try:
        yield
    except VastError as exc:
        raise to_application_error(exc, attempt) from None
