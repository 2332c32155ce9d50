"""How do many slots read their instances without one call each? A shared, single-flight listing.

Every slot of a worker asks `observe(instance_id)`; the first caller in a period triggers one
paginated v1 listing of the account and everyone else reads its answer. The number of Vast.ai
calls per period is then the number of pages (25 instances each), not the number of slots.
An instance missing from the listing is read once with `show` (it may be too new to be listed).
A malformed listing raises: it is never taken for "zero instances".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from warmpool.models import InstanceView, Observation
from warmpool.vast import Instance, VastClient, to_view


class SharedListing:
    def __init__(
        self, client: VastClient, *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._snapshot: dict[int, Instance] = {}
        self._taken_at = float("-inf")
        self._inflight: asyncio.Task[dict[int, Instance]] | None = None

    async def _fresh(self) -> dict[int, Instance]:
        if self._clock() - self._taken_at < self._ttl:
            return self._snapshot
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        task = self._inflight
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._inflight is task:
                self._inflight = None

    async def _fetch(self) -> dict[int, Instance]:
        instances = await self._client.list_instances()
        snapshot = {i.id: i for i in instances if i.id is not None}
        self._snapshot = snapshot
        self._taken_at = self._clock()
        return snapshot

    async def observe(self, instance_id: int) -> Observation:
        snapshot = await self._fresh()
        found = snapshot.get(instance_id)
        if found is None:
            found = await self._client.show_instance(instance_id)
        if found is None:
            return Observation(gone=True)
        return Observation(gone=False, instance=to_view(found))

    async def with_prefix(self, prefix: str) -> list[InstanceView]:
        """Every live instance whose label starts with `prefix` (the reaper's and pool's view)."""
        snapshot = await self._fresh()
        return [to_view(i) for i in snapshot.values() if i.label and i.label.startswith(prefix)]
