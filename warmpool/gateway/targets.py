"""Where does `/comfy/{lease_id}/...` go, and with which token? A lease resolved to its instance.

A target is the lease's validated connection URL plus the slot's label, from which the instance
token is derived (HMAC of `WARMPOOL_INSTANCE_SECRET` and the label, as the activities do). The
label is `wp.<pool>.<slot>.<attempt>`: the pool's lease gives pool and slot, the slot's `status`
query gives the attempt (read-only; nothing is added to the pool workflow for this).

Resolutions are cached for `WARMPOOL_GATEWAY_LEASE_CACHE_S` (default 1 s), so a busy proxy asks
Temporal about once a second per lease; the expiry time is checked on every request, and a
release through the gateway drops the cache entry at once. A release made elsewhere (CLI) is
seen within the cache period.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from warmpool.gateway.errors import ApiError
from warmpool.gateway.pools import Pools
from warmpool.instance_token import derive_instance_token
from warmpool.labels import slot_label
from warmpool.models import PoolLease
from warmpool.secrets import SecretName, SecretStore

MAX_CACHED = 10_000
"""Past this many cached leases, entries older than the cache period are dropped."""


@dataclass(frozen=True)
class Target:
    lease_id: str
    pool: str
    lease: PoolLease
    label: str
    resolved_at: float
    token: str = field(repr=False)
    """The instance's portal token, derived once per resolution (never printed)."""

    @property
    def url(self) -> str:
        return self.lease.connection_url.rstrip("/")


def check_active(lease: PoolLease, now: datetime | None = None) -> None:
    """410 for a lease that was released, expired or lost its slot, with the pool's reason."""
    if lease.ended_at is not None:
        raise ApiError(410, "lease_ended", f"lease {lease.lease_id} ended: {lease.end_reason}")
    if lease.leased_until <= (now or datetime.now(UTC)):
        raise ApiError(
            410, "lease_expired", f"lease {lease.lease_id} expired at {lease.leased_until}"
        )


class Targets:
    def __init__(self, pools: Pools, secrets: SecretStore, ttl_s: float) -> None:
        self._pools = pools
        self._secrets = secrets
        self._ttl_s = ttl_s
        self._cache: dict[str, Target] = {}
        self._inflight: dict[str, asyncio.Future[Target]] = {}

    async def resolve(self, lease_id: str) -> Target:
        cached = self._cache.get(lease_id)
        if cached is not None and time.monotonic() - cached.resolved_at < self._ttl_s:
            check_active(cached.lease)
            return cached
        # One resolution per lease at a time: a burst of requests past the cache period asks
        # Temporal once. Shielded, so a client that goes away does not cancel it for the others.
        pending = self._inflight.get(lease_id)
        if pending is None:
            pending = asyncio.ensure_future(self._refresh(lease_id, cached))
            self._inflight[lease_id] = pending
            pending.add_done_callback(lambda done: self._settled(lease_id, done))
        return await asyncio.shield(pending)

    def _settled(self, lease_id: str, done: asyncio.Future[Target]) -> None:
        self._inflight.pop(lease_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so no waiter left is not an "unretrieved" error

    async def _refresh(self, lease_id: str, cached: Target | None) -> Target:
        try:
            pool, lease = await self._pools.lease(lease_id)
            check_active(lease)
        except ApiError:
            self._cache.pop(lease_id, None)
            raise
        if cached is not None and cached.lease.connection_url == lease.connection_url:
            label = cached.label
        else:
            label = await self._label(pool, lease)
        target = Target(lease_id, pool, lease, label, time.monotonic(), self._token(label))
        self._cache[lease_id] = target
        if len(self._cache) > MAX_CACHED:
            stale = time.monotonic() - self._ttl_s
            for key in [k for k, t in self._cache.items() if t.resolved_at < stale]:
                del self._cache[key]
        return target

    def forget(self, lease_id: str) -> None:
        self._cache.pop(lease_id, None)

    def _token(self, label: str) -> str:
        secret = self._secrets.get(SecretName.INSTANCE)
        if not secret:
            raise ApiError(
                503,
                "instance_secret_unset",
                "the gateway has no WARMPOOL_INSTANCE_SECRET: it cannot open the instance portal",
            )
        return derive_instance_token(secret.encode(), label)

    async def _label(self, pool: str, lease: PoolLease) -> str:
        slot = await self._pools.slot_status(pool, lease.slot)
        if slot.connection_url != lease.connection_url:
            raise ApiError(
                503,
                "slot_changed",
                f"slot {lease.slot} no longer serves the instance of lease {lease.lease_id}",
            )
        return slot_label(pool, lease.slot, slot.attempt)
