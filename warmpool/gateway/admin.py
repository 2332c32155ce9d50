"""What can an operator do through the gateway? The seeds' admin endpoints, on our workflows.

Paths are the seeds' (`/api/proxy/...`), so existing dashboards and scripts keep working. Every
route needs the admin key (`auth.py`). Token routes go the way `starter.py tokens` goes:
`validate-tokens` is `tokens check-now` (the workers check, through the token watch), and
`update-token` is `tokens set` (the file secret store every worker on this machine reads, then
a re-check). A token is never echoed back: answers carry its 8-hex-digit fingerprint only.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StringConstraints
from temporalio.service import RPCError

from warmpool.clients.token_watch import (
    TokenWatchUnavailable,
    ensure_token_watch,
    notify_watch,
    wait_for_round,
)
from warmpool.gateway.auth import require_admin
from warmpool.gateway.context import Gateway, get_gateway
from warmpool.gateway.errors import JSON_BODY_LIMIT, ApiError, documented
from warmpool.models import Model, PoolStatus
from warmpool.names import Pool
from warmpool.secrets import FileSecretStore, SecretName, fingerprint
from warmpool.tokens import ServiceRecord, TokenHealth, TokenService

router = APIRouter(
    prefix="/api/proxy",
    dependencies=[Depends(require_admin)],
    tags=["admin"],
    max_body_size=JSON_BODY_LIMIT,
)

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PoolName = Annotated[
    str | None,
    Query(
        pattern=r"^[a-z0-9][a-z0-9-]{0,23}$",
        description="a pool this gateway serves; default: the first of WARMPOOL_GATEWAY_POOLS",
    ),
]
TokenValue = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=4096, pattern=r"^[!-~]+$"),
]
ADMIN_ERRORS = documented(401, 404, 503)


class Signalled(Model):
    pool: str
    signal: str


class PoolSummary(Model):
    """The short answer for a dashboard tile."""

    pool: str
    min_ready: int
    max_slots: int
    idle_ready: int
    counts: dict[str, int]
    active_leases: int
    waiting: int
    spend_per_hour: float
    budget_limited: bool
    safe_mode: bool
    safe_reason: str | None
    draining: bool
    target: int | None = None
    """Warm slots (READY, leased or starting) the scaling policy wants now."""
    stopped: int = 0
    """Parked slots: instance stopped, disk billed, GPU not."""
    spend_per_hour_by_tier: dict[str, float] = Field(default_factory=dict)
    """$/h now by tier: idle, leased, starting, stopped."""


class AdminStatus(Model):
    pools: list[PoolStatus]
    unavailable: dict[str, str]
    """Pools that did not answer, with why."""


class TokenReport(Model):
    ok: bool
    """Every required token is valid."""
    rounds: int
    last_round_at: datetime | None
    services: list[ServiceRecord]


class TokenUpdate(Model):
    service: TokenService
    token: TokenValue


class TokenUpdated(Model):
    service: TokenService
    version: str
    """Fingerprint of the stored value (first 8 hex digits of its SHA-256)."""
    watch_notified: bool


@router.post(
    "/warm-pool/prewarm", status_code=202, response_model=Signalled, responses=ADMIN_ERRORS
)
async def prewarm(gateway: GatewayDep, pool: PoolName = None) -> Signalled:
    """Bring the pool to its target now (the `prewarm` signal)."""
    name = gateway.pools.name(pool)
    await gateway.pools.signal(name, Pool.PREWARM)
    return Signalled(pool=name, signal=Pool.PREWARM)


@router.get("/warm-pool", response_model=PoolSummary, responses=ADMIN_ERRORS)
async def warm_pool(gateway: GatewayDep, pool: PoolName = None) -> PoolSummary:
    """The pool at a glance."""
    status = await gateway.pools.status(gateway.pools.name(pool))
    return PoolSummary(
        pool=status.pool,
        min_ready=status.config.min_ready,
        max_slots=status.config.max_slots,
        idle_ready=status.idle_ready,
        counts=status.counts,
        active_leases=len(status.active_leases),
        waiting=status.waiting,
        spend_per_hour=status.spend_per_hour,
        budget_limited=status.budget_limited,
        safe_mode=status.safe_mode,
        safe_reason=status.safe_reason,
        draining=status.draining,
        target=status.scaling.target if status.scaling else None,
        stopped=status.scaling.stopped if status.scaling else 0,
        spend_per_hour_by_tier=status.costs.spend_per_hour_by_tier if status.costs else {},
    )


@router.get("/admin/warm-pool/status", response_model=AdminStatus, responses=documented(401, 503))
async def admin_status(gateway: GatewayDep) -> AdminStatus:
    """Every served pool's full status (slots, leases, failures, stats)."""
    names = gateway.pools.names
    answers = await asyncio.gather(
        *(gateway.pools.status(name) for name in names), return_exceptions=True
    )
    pools: list[PoolStatus] = []
    unavailable: dict[str, str] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, PoolStatus):
            pools.append(answer)
        elif isinstance(answer, ApiError):
            unavailable[name] = answer.detail
        else:
            raise answer
    return AdminStatus(pools=pools, unavailable=unavailable)


@router.post(
    "/admin/validate-tokens", response_model=TokenReport, responses=documented(401, 503, 504)
)
async def validate_tokens(gateway: GatewayDep) -> TokenReport:
    """Have the workers check every token now (`starter.py tokens check-now`)."""
    settings = gateway.settings
    limit = settings.gateway_token_check_timeout_s
    try:
        async with asyncio.timeout(limit):
            handle = await ensure_token_watch(
                gateway.pools.client,
                settings,
                workflow_id=gateway.token_watch_id,
                check_now=True,
            )
            status = await wait_for_round(handle)
    except TimeoutError:
        raise ApiError(
            504,
            "token_check_timeout",
            f"no token check finished within {limit:.0f}s: is a worker running on task queue "
            f"{settings.task_queue}?",
        ) from None
    except TokenWatchUnavailable as exc:
        raise ApiError(503, "token_watch_unavailable", str(exc)) from None
    except RPCError as exc:
        raise ApiError(503, "temporal_unavailable", f"token watch: {exc.message}") from None
    ok = all(r.health == TokenHealth.VALID for r in status.services if r.required)
    return TokenReport(
        ok=ok, rounds=status.rounds, last_round_at=status.last_round_at, services=status.services
    )


@router.post(
    "/admin/update-token", response_model=TokenUpdated, responses=documented(400, 401, 503)
)
async def update_token(gateway: GatewayDep, body: TokenUpdate) -> TokenUpdated:
    """Store a new token for a service (`starter.py tokens set`), then ask for a re-check."""
    files = FileSecretStore(gateway.settings.secrets_dir)
    try:
        await asyncio.to_thread(files.set, SecretName(body.service.value), body.token)
    except OSError as exc:
        raise ApiError(
            503, "secret_store_unwritable", f"cannot write {body.service.value}: {exc.strerror}"
        ) from None
    try:
        async with asyncio.timeout(gateway.settings.gateway_temporal_timeout_s):
            notified = await notify_watch(gateway.pools.client, gateway.token_watch_id)
    except (TokenWatchUnavailable, TimeoutError):
        notified = False
    return TokenUpdated(
        service=body.service, version=fingerprint(body.token), watch_notified=notified
    )
