"""Which activities does a worker run, and with which clients? `build_activities` wires them.

One `VastClient`, one shared listing, one TLS context for the ComfyUI clients and one token
validator per worker process; every slot the worker runs shares them (that keeps provider calls
O(pages), not O(slots), and a READY slot's keepalive client at a few KB). The client paces each
Vast.ai endpoint at its minimum interval times `vast_pacing_scale` and backs every caller off
after a 429.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from activities.comfy import ComfyActivities
from activities.reaper import ReaperActivities
from activities.slots import exclude_machine, message_slot, resume_blocked
from activities.ssh import SshLogActivities
from activities.tokens import TokenActivities
from activities.vast import VastActivities
from warmpool.comfy import tls_context
from warmpool.errors import VastAuthError
from warmpool.listing import SharedListing
from warmpool.logging import Redactor
from warmpool.queues import CREATE_QUEUE, DESTROY_QUEUE, SEARCH_QUEUE, PacedQueue
from warmpool.secrets import SecretName, SecretStore, current_values
from warmpool.settings import Settings
from warmpool.tokens import TokenValidator
from warmpool.vast import VastClient, scaled_min_intervals


@dataclass
class WorkerActivities:
    """Activities for the main task queue and for the provider (rate-limited) task queues.

    `vast` is every provider activity, served on `<queue>-vast`; `paced` maps a paced queue's
    suffix (`warmpool.queues.PACED_QUEUES`) to the one activity it runs. A queue missing from
    `paced` is served with all of `vast`. Keeping every activity on `<queue>-vast` lets tasks
    scheduled there before the per-endpoint queues existed (and their retries) still run.
    """

    main: list[Callable[..., Any]]
    vast: list[Callable[..., Any]]
    client: VastClient
    paced: dict[str, list[Callable[..., Any]]] = field(default_factory=dict)

    def for_paced(self, queue: PacedQueue) -> list[Callable[..., Any]]:
        return self.paced.get(queue.suffix, self.vast)

    async def aclose(self) -> None:
        await self.client.aclose()


def _vast_key(secrets: SecretStore) -> Callable[[], str]:
    def read() -> str:
        key = secrets.get(SecretName.VAST)
        if not key:
            raise VastAuthError("no Vast.ai API key configured (VASTAI_API_KEY)", endpoint="any")
        return key

    return read


def build_activities(
    settings: Settings,
    secrets: SecretStore,
    *,
    vast_base_url: str,
    hf_base_url: str | None = None,
    civitai_base_url: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> WorkerActivities:
    client = VastClient(
        vast_base_url,
        _vast_key(secrets),
        transport=transport,
        timeout=settings.vast_timeout_s,
        min_intervals=scaled_min_intervals(settings.vast_pacing_scale),
    )
    listing_ttl = min(settings.poll_active_ms, settings.keepalive_interval_ms) / 2000
    listing = SharedListing(client, ttl=listing_ttl)

    async def vast_identity() -> str:
        user = await client.current_user()
        return str(user.id)

    validator = TokenValidator(
        secrets,
        hf_base_url=hf_base_url or settings.hf_endpoint,
        civitai_base_url=civitai_base_url or settings.civitai_base_url,
        vast_check=vast_identity,
        cache_ttl=settings.token_cache_ms / 1000,
    )
    vast = VastActivities(client, listing, secrets)
    comfy = ComfyActivities(listing, secrets, tls_context())
    reaper = ReaperActivities(client)
    tokens = TokenActivities(validator)
    redactor = Redactor(lambda: current_values(secrets))
    ssh = SshLogActivities(lambda: secrets.get(SecretName.SSH_KEY), redact=redactor.text)
    return WorkerActivities(
        main=[
            comfy.await_ready,
            comfy.validate_ports,
            comfy.check_environment,
            comfy.warmup,
            comfy.clean,
            comfy.watch,
            tokens.check,
            reaper.slot_claims,
            ssh.follow_logs,
            message_slot,
            exclude_machine,
            resume_blocked,
        ],
        vast=[
            vast.search_offers,
            vast.rent,
            vast.observe,
            vast.list_labelled,
            vast.destroy,
            vast.show,
            vast.stop,
            vast.start,
            reaper.list_candidates,
        ],
        client=client,
        paced={
            SEARCH_QUEUE.suffix: [vast.search_offers],
            CREATE_QUEUE.suffix: [vast.rent],
            DESTROY_QUEUE.suffix: [vast.destroy],
        },
    )
