"""What does a caller get when the gateway says no? One JSON shape: `{"error", "detail"}`.

`error` is a stable machine-readable code (the front end switches on it), `detail` one line a
person can act on. A lease request that went unanswered (503) also carries its `request_id`:
asking again with it returns the lease the pool may have granted meanwhile, never a second one.
No answer ever quotes a request's body or headers, so a token or key sent by mistake is never
echoed back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from warmpool.models import Model

JSON_BODY_LIMIT = 64 * 1024
"""Bytes a JSON route reads at most (413 beyond); proxied bodies are streamed, not limited."""

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


class ErrorBody(Model):
    error: str
    detail: str
    request_id: str | None = Field(
        default=None,
        description="only on a lease request that went unanswered: retry with this request_id",
    )


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route and rendered as JSON."""

    def __init__(
        self, status: int, error: str, detail: str, *, request_id: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.request_id = request_id

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.detail, request_id=self.request_id)


def error_response(
    status: int,
    error: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    *,
    request_id: str | None = None,
) -> JSONResponse:
    body = ErrorBody(error=error, detail=detail, request_id=request_id).model_dump(
        exclude_none=True
    )
    return JSONResponse(body, status_code=status, headers=headers)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each listed status, and 422, answers an ErrorBody."""
    return {status: {"model": ErrorBody} for status in (*statuses, 422)}


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "request"


async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 in one line naming each bad field; never the offending value (it may be a token)."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in exc.errors()
    ]
    return error_response(422, "invalid_request", "; ".join(problems)[:1000])


def http_error_code(status: int) -> str:
    """The `error` code of a plain HTTP error (`too_large` for 413, ...)."""
    return _HTTP_CODES.get(status, "http_error")


async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = http_error_code(exc.status_code)
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)
