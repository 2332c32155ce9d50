"""How does the studio's front end get a GPU? Acquire, renew, release and show a lease over HTTP.

These are `warmpool.clients.pool` calls on the pool workflow (the lease authority), so they behave
as `starter.py lease ...` does: a request id makes acquire idempotent, release is idempotent,
and waiting for capacity uses the `request_lease` signal (no update held open). The answer's
`proxy_path` is where the front end reaches ComfyUI: `/comfy/<lease_id>/`.

Status codes: 201 granted; 404 unknown pool or lease; 409 no capacity (now, or within the
wait); 410 the lease has ended; 422 invalid request or refused by the pool (e.g. a duration
over the pool's maximum); 503 Temporal did not answer.

Every acquire has a request id (the caller's `request_id`, or one generated here). A 503 to an
acquire carries it (`{"error", "detail", "request_id"}`): the pool may still grant the lease
once it runs again (a failover), so before answering the gateway tells the pool that nobody
received the answer (`pool_client.abandon_request`); the pool then releases such a grant unless a
request with the same `request_id` claims it within its claim window. Retrying with that
`request_id` returns that lease (or a new one if none was granted), never a second lease.
"""

from __future__ import annotations

import logging
import time
import unicodedata
import uuid
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import Field, field_validator
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from warmpool.clients import pool as pool_client
from warmpool.errors import ErrorType
from warmpool.gateway.context import Gateway, get_gateway
from warmpool.gateway.errors import JSON_BODY_LIMIT, ApiError, documented
from warmpool.gateway.targets import check_active
from warmpool.labels import slot_workflow_id
from warmpool.models import (
    LeaseGrant,
    LeaseRequest,
    Model,
    PoolConfig,
    PoolLease,
    RenewRequest,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/leases", tags=["leases"], max_body_size=JSON_BODY_LIMIT)

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
LEASE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
LeaseId = Annotated[str, Path(pattern=LEASE_ID_PATTERN, description="the lease's id")]
MAX_DURATION_S = PoolConfig.model_fields["max_lease"].default.total_seconds()
"""The pools' default maximum lease; a pool configured lower refuses longer ones (422)."""
WAIT_POLL_S = 0.2


Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A number of seconds in JSON: an integer or a finite float, never `true`, `NaN` or a string."""


_CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
PRINTABLE = f"^[^{_CONTROL}]*[^\\s{_CONTROL}][^{_CONTROL}]*$"
"""What `printable` accepts, as the OpenAPI description's pattern (for clients and fuzzers)."""


def printable(value: str, what: str) -> str:
    """Refuse text that is blank or holds control characters (it ends up in logs and labels);
    the messages say which, where a pattern mismatch would not."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{what} must not contain control characters")
    if not value.strip():
        raise ValueError(f"{what} must not be blank")
    return value


class AcquireBody(Model):
    holder: str = Field(
        min_length=1,
        max_length=200,
        description="who uses the instance: not blank, no control characters",
        json_schema_extra={"pattern": PRINTABLE},
    )
    pool: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,23}$",
        description="a pool this gateway serves; default: the first of WARMPOOL_GATEWAY_POOLS",
    )
    duration_s: Seconds | None = Field(
        default=None,
        ge=1,
        le=MAX_DURATION_S,
        description="seconds the lease lasts; default: the pool's default lease",
    )
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="idempotency key (default: generated); a 503 names the one to retry with; "
        "not blank, no control characters",
        json_schema_extra={"pattern": PRINTABLE},
    )
    wait_s: Seconds = Field(
        default=0,
        ge=0,
        le=1800,
        description="seconds to wait for capacity (capped by WARMPOOL_GATEWAY_MAX_WAIT_S)",
    )
    min_environment: str | None = Field(
        default=None,
        pattern=r"^env-[0-9a-f]{12}$",
        description="only a slot on this studio environment version or one applied after it; "
        "otherwise 409 'no capacity with that environment'",
    )
    node_class: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="only a slot whose environment declares this ComfyUI node class",
        json_schema_extra={"pattern": PRINTABLE},
    )

    @field_validator("holder")
    @classmethod
    def _holder(cls, value: str) -> str:
        return printable(value, "holder")

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str | None) -> str | None:
        return None if value is None else printable(value, "request_id")

    @field_validator("node_class")
    @classmethod
    def _node_class(cls, value: str | None) -> str | None:
        return None if value is None else printable(value, "node_class")


class RenewBody(Model):
    duration_s: Seconds | None = Field(
        default=None, ge=1, le=MAX_DURATION_S, description="from now; default: the pool's default"
    )


class LeaseView(Model):
    lease_id: str
    pool: str
    holder: str
    request_id: str
    slot: int
    slot_id: str
    connection_url: str
    proxy_path: str
    granted_at: datetime
    leased_until: datetime
    active: bool
    ended_at: datetime | None
    end_reason: str | None


def granted(pool: str, grant: LeaseGrant) -> LeaseView:
    """A lease just granted, from the pool's answer alone (no second round trip)."""
    return view(pool, PoolLease.model_validate(grant.model_dump(exclude={"slot_id"})))


def view(pool: str, lease: PoolLease) -> LeaseView:
    return LeaseView(
        lease_id=lease.lease_id,
        pool=pool,
        holder=lease.holder,
        request_id=lease.request_id,
        slot=lease.slot,
        slot_id=slot_workflow_id(pool, lease.slot),
        connection_url=lease.connection_url,
        proxy_path=f"/comfy/{lease.lease_id}/",
        granted_at=lease.granted_at,
        leased_until=lease.leased_until,
        active=lease.ended_at is None,
        ended_at=lease.ended_at,
        end_reason=lease.end_reason,
    )


def refused(exc: WorkflowUpdateFailedError) -> ApiError:
    """The pool's answer to a refused update: no capacity (409) or an invalid request (422)."""
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        if cause.type == ErrorType.NO_CAPACITY:
            return ApiError(409, "no_capacity", cause.message)
        return ApiError(422, "refused", cause.message)
    return ApiError(422, "refused", str(cause))


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


async def _lease(
    gateway: Gateway, pool: str, request: LeaseRequest, wait: float
) -> tuple[LeaseGrant, str]:
    """The grant, and "granted" (at once) or "waited" (after waiting up to `wait` s)."""
    pools = gateway.pools
    try:
        grant = await pools.call(
            pool, "lease", lambda: pool_client.acquire(pools.client, pool, request)
        )
        return grant, "granted"
    except WorkflowUpdateFailedError as exc:
        error = refused(exc)
        if error.error != "no_capacity" or wait <= 0:
            raise error from None
    try:
        grant = await pools.call(
            pool,
            "lease (waiting)",
            lambda: pool_client.acquire_waiting(pools.client, pool, request, poll_s=WAIT_POLL_S),
            extra_s=wait + pool_client.WAIT_GRACE_S,
        )
    except pool_client.LeaseNotGranted as exc:
        raise ApiError(409, "no_capacity", f"no lease within {wait:g}s: {exc}") from None
    return grant, "waited"


async def unanswered(gateway: Gateway, pool: str, request: LeaseRequest, exc: ApiError) -> ApiError:
    """A lease request Temporal did not answer in time: tell the pool nobody got an answer
    (awaited, so that a retry reaches the pool after the signal), and name the request id."""
    pools = gateway.pools
    told = await pool_client.abandon_request(
        pool_client.pool_handle(pools.client, pool),
        request.request_id,
        timeout_s=min(pool_client.ABANDON_TIMEOUT_S, pools.timeout_s),
    )
    log.warning(
        "lease request %s to pool %s unanswered (%s); pool %s",
        request.request_id,
        pool,
        exc.error,
        "told" if told else "not reachable",
    )
    return ApiError(
        exc.status,
        exc.error,
        f"{exc.detail}; a lease may still be granted: retry with request_id "
        f"{request.request_id} to get it",
        request_id=request.request_id,
    )


@router.post(
    "", status_code=201, response_model=LeaseView, responses=documented(400, 404, 409, 503)
)
async def acquire(gateway: GatewayDep, body: AcquireBody) -> LeaseView:
    """Lease a READY instance, at once or within `wait_s`.

    A 503 names the request's `request_id`: retry with it to get the lease the pool may have
    granted after the deadline (a grant nobody claims is released by the pool)."""
    pools = gateway.pools
    pool = pools.name(body.pool)
    wait = min(body.wait_s, gateway.settings.gateway_max_wait_s)
    request = LeaseRequest(
        holder=body.holder,
        duration=_seconds(body.duration_s),
        request_id=body.request_id or uuid.uuid4().hex,
        wait_for=timedelta(seconds=wait),
        min_environment=body.min_environment,
        node_class=body.node_class,
    )
    started, outcome = time.perf_counter(), "error"
    try:
        grant, outcome = await _lease(gateway, pool, request, wait)
        pools.remember(grant.lease_id, pool)
    except ApiError as exc:
        outcome = exc.error
        if exc.status == 503:
            raise await unanswered(gateway, pool, request, exc) from None
        raise
    finally:
        gateway.meters.lease_seconds.labels(pool, outcome).observe(time.perf_counter() - started)
    return granted(pool, grant)


@router.get("/{lease_id}", response_model=LeaseView, responses=documented(404, 410, 503))
async def show(gateway: GatewayDep, lease_id: LeaseId) -> LeaseView:
    """The lease, active or ended (410 once its pool no longer keeps it)."""
    pool, lease = await gateway.pools.lease(lease_id)
    return view(pool, lease)


@router.post(
    "/{lease_id}/renew", response_model=LeaseView, responses=documented(400, 404, 410, 503)
)
async def renew(gateway: GatewayDep, lease_id: LeaseId, body: RenewBody | None = None) -> LeaseView:
    """Extend an active lease to `duration_s` from now."""
    pools = gateway.pools
    pool, lease = await pools.lease(lease_id)
    check_active(lease)
    request = RenewRequest(lease_id=lease_id, duration=_seconds(body.duration_s if body else None))
    try:
        await pools.call(pool, "renew", lambda: pool_client.renew(pools.client, pool, request))
    except WorkflowUpdateFailedError as exc:
        raise refused(exc) from None
    gateway.targets.forget(lease_id)
    _, lease = await pools.lease(lease_id)
    return view(pool, lease)


@router.post("/{lease_id}/release", response_model=LeaseView, responses=documented(404, 410, 503))
async def release(gateway: GatewayDep, lease_id: LeaseId) -> LeaseView:
    """End the lease (idempotent: an ended lease is answered as it ended)."""
    pools = gateway.pools
    pool, lease = await pools.lease(lease_id)
    if lease.ended_at is None:
        try:
            lease = await pools.call(
                pool, "release", lambda: pool_client.release(pools.client, pool, lease_id)
            )
        except WorkflowUpdateFailedError as exc:
            raise refused(exc) from None
    gateway.targets.forget(lease_id)
    return view(pool, lease)
