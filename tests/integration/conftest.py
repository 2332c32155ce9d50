"""A real stack per test: dev server + simulator over HTTP + a worker with the real activities.

The simulator's instances sit on a random loopback address (their `public_ipaddr`), next to a
`Stranger`: another tenant's ComfyUI on that address's port 8188, which must never get a token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities import WorkerActivities
from tests.helpers import Stranger, new_queue, running_stranger
from vastsim import SimConfig, Simulator
from warmpool.labels import slot_workflow_id
from warmpool.models import SlotInput, SlotStatus
from warmpool.secrets import (
    EnvSecretStore,
    FileSecretStore,
    LayeredSecretStore,
    SecretName,
    SecretStore,
)
from warmpool.settings import Settings
from worker import serving

INSTANCE_SECRET = "integration-instance-secret"

FAST: dict[str, Any] = {
    "poll_active_ms": 200,
    "poll_idle_ms": 500,
    "keepalive_interval_ms": 200,
    "keepalive_timeout_ms": 500,
    "keepalive_max_failures": 3,
    "token_cache_ms": 60_000,
    "readiness_initial_s": 0.2,
    "readiness_max_s": 1.0,
    "readiness_timeout_s": 15,
    "provision_timeout_s": 30,
    "fatal_grace_s": 1.0,
    "retry_backoff_initial_s": 0.2,
    "retry_backoff_max_s": 1.0,
    "tcp_timeout_s": 0.5,
    "http_timeout_s": 1.0,
    "vast_calls_per_second": 100,
    "vast_pacing_scale": 0,  # the simulator enforces no limits here: no pacing
    "min_direct_ports": 2,
    "min_inet_down": 0,
    "min_reliability": 0,
    "max_dph": 5,
}
FAST_SIM = SimConfig(provision_s=0.1, created_s=0.1, loading_s=0.2, comfy_boot_s=0.4)


@dataclass
class Stack:
    env: WorkflowEnvironment
    sim: Simulator
    settings: Settings
    queue: str
    secrets: LayeredSecretStore
    activities: WorkerActivities
    stranger: Stranger | None = None

    @property
    def client(self) -> Client:
        return self.env.client

    async def start_slot(
        self, index: int = 0, **config: object
    ) -> WorkflowHandle[object, SlotStatus]:
        slot_config = self.settings.slot_config().merged(config)
        return await self.client.start_workflow(
            "WarmSlotWorkflow",
            SlotInput(pool="it", index=index, config=slot_config),
            id=slot_workflow_id(f"it-{self.queue}", index),
            task_queue=self.queue,
            result_type=SlotStatus,
        )


StackFactory = Callable[..., "AsyncIterator[Stack]"]


def sim_secrets(sim: Simulator, *before: SecretStore, **more: str) -> LayeredSecretStore:
    """A worker's secrets against `sim`: its API key and the instance secret, after `before`."""
    values = {"VASTAI_API_KEY": sim.api_key, "WARMPOOL_INSTANCE_SECRET": INSTANCE_SECRET}
    return LayeredSecretStore([*before, EnvSecretStore({**values, **more})])


async def start_stack(
    exits: AsyncExitStack,
    env: WorkflowEnvironment,
    sim: Simulator,
    settings: Settings,
    secrets: LayeredSecretStore,
    *,
    queue: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Stack:
    """Workers with the real activities against `sim`, running until `exits` closes."""
    queue = queue or new_queue()
    activities = await exits.enter_async_context(
        serving(
            env.client,
            settings,
            secrets,
            sim,
            transport=transport,
            task_queue=queue,
            heartbeat_throttle=timedelta(seconds=0.2),
        )
    )
    return Stack(env, sim, settings, queue, secrets, activities)


@pytest.fixture
async def stack_factory(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> AsyncIterator[Callable[..., object]]:
    """Build a stack with optional simulator config and a transport wrapper for the client."""
    async with AsyncExitStack() as exits:

        async def make(
            sim_config: SimConfig = FAST_SIM,
            wrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
            **overrides: object,
        ) -> Stack:
            stranger = beside_stranger(exits, sim_config.public_host)
            sim_config = sim_config.model_copy(update={"public_host": stranger.host})
            sim = await exits.enter_async_context(Simulator(sim_config))
            settings = Settings(**{**FAST, **overrides})
            secrets = sim_secrets(sim, FileSecretStore(tmp_path / "secrets"))
            transport = wrap(httpx.AsyncHTTPTransport()) if wrap else None
            stack = await start_stack(exits, dev_env, sim, settings, secrets, transport=transport)
            stack.stranger = stranger
            return stack

        yield make


def beside_stranger(exits: AsyncExitStack, host: str | None = None) -> Stranger:
    """A Stranger on `host:8188` (a fresh random loopback address when None) until `exits`
    closes, which then fails if it ever received a token. Enter it before the simulator."""
    stranger = exits.enter_context(running_stranger(host))
    exits.callback(stranger.assert_no_token)
    return stranger


def assert_no_orphans(sim: Simulator) -> None:
    """After a test every slot is retired: no instance may still bill."""
    live = sim.live_instances()
    assert live == [], f"instances left behind: {live}"


__all__ = [
    "FAST",
    "FAST_SIM",
    "INSTANCE_SECRET",
    "Stack",
    "SecretName",
    "assert_no_orphans",
    "beside_stranger",
]
