"""How is a worker process run? settings, secrets, clients, activities, workers; SIGTERM drains.

Several workers share the process: the main task queue (workflows, ComfyUI and token
activities) and the provider task queues (Vast.ai activities), whose activity start rates the
Temporal server caps across every worker: search, create and destroy each on a queue of their own
at one start per endpoint interval (Vast.ai's limits times `WARMPOOL_VAST_PACING_SCALE`), the
other provider calls on `<queue>-vast` at `WARMPOOL_VAST_CALLS_PER_SECOND`.

With no `VASTAI_API_KEY` and no `VASTAI_BASE_URL`, an embedded simulator is the provider.
With `WARMPOOL_WORKER_METRICS_ADDR`, the process serves Prometheus `/metrics` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities import WorkerActivities, build_activities
from warmpool.clients.token_watch import ensure_token_watch
from warmpool.logging import configure_logging
from warmpool.queues import PACED_QUEUES, PacedQueue, provider_queues, vast_queue
from warmpool.sandbox import LeanSandbox
from warmpool.secrets import (
    SIM_INSTANCE_SECRET,
    EnvSecretStore,
    SecretStore,
    current_values,
    secret_store,
)
from warmpool.settings import DEFAULT_VAST_BASE_URL, Settings, SettingsError, load_settings
from warmpool.temporal import connect
from warmpool.vast import VAST_DEFAULT_MIN_INTERVALS
from workflows import WORKFLOWS, WarmPoolWorkflow

log = logging.getLogger("warmpool.worker")

HEARTBEAT_THROTTLE = timedelta(seconds=20)
"""A cancelled watch (retire, lease change) stops within this; 1,000 watching slots then send
about 50 heartbeats a second to the server."""

MAX_CACHED_WORKFLOWS = 200
"""Workflows kept in memory between tasks (the SDK's default is 1,000). A READY slot gets no
workflow task while its watch is healthy, so it need not stay cached: evicted, it is replayed
from its history when something happens to it. A cached slot costs ~270 KB (its sandboxed
module, instance and SDK state): 1,000 slots on one worker measured 234 MB RSS with 200 cached,
314 MB with 500 (`bench/api_calls_per_period.py`). The price is replay CPU when more slots than
this change state at once (e.g. retiring 1,000 slots together)."""

STICKY_SCHEDULE_TO_START = timedelta(seconds=2)
"""How long a cached workflow's next task waits on this worker's sticky queue before the server
hands it to any worker (the SDK's default is 10 s). After a worker dies (kill -9) its pool's and
slots' next tasks move to a surviving worker this soon, so a lease asked during the failover
is answered within 3 s (3.4 s measured with 3 s here); a live worker polls its sticky queue
continuously, so it takes a task in milliseconds. A busier worker that misses the bound only
costs a replay of that workflow's (bounded) history on whichever worker takes the task."""

UNSANDBOXED: tuple[type, ...] = (WarmPoolWorkflow,)
"""The lease path's workflow runs without the sandbox's per-task cost (see warmpool/sandbox.py)."""


class Endpoints(Protocol):
    """Where the Vast.ai, Hugging Face and Civitai calls go (a `vastsim.Simulator` is one)."""

    @property
    def base_url(self) -> str: ...
    @property
    def hf_base_url(self) -> str: ...
    @property
    def civitai_base_url(self) -> str: ...


@dataclass(frozen=True)
class Provider:
    """The real provider's endpoints, from the settings."""

    base_url: str
    hf_base_url: str
    civitai_base_url: str


def create_workers(
    client: Client,
    settings: Settings,
    activities: WorkerActivities,
    *,
    task_queue: str | None = None,
    workflows: Sequence[type] = WORKFLOWS,
    heartbeat_throttle: timedelta = HEARTBEAT_THROTTLE,
    max_cached_workflows: int = MAX_CACHED_WORKFLOWS,
) -> list[Worker]:
    """`heartbeat_throttle` caps how long a cancel waits to reach a running activity."""
    queue = task_queue or settings.task_queue
    beat: dict[str, Any] = {
        "max_heartbeat_throttle_interval": heartbeat_throttle,
        "default_heartbeat_throttle_interval": heartbeat_throttle,
    }
    main = Worker(
        client,
        task_queue=queue,
        workflows=list(workflows),
        activities=activities.main,
        max_concurrent_activities=settings.max_concurrent_activities,
        max_cached_workflows=max_cached_workflows,
        sticky_queue_schedule_to_start_timeout=STICKY_SCHEDULE_TO_START,
        workflow_runner=LeanSandbox(workflows, unsandboxed=UNSANDBOXED),
        graceful_shutdown_timeout=timedelta(seconds=10),
        **beat,
    )
    workers = [main]
    for name, acts, rate in provider_plan(queue, settings, activities):
        workers.append(
            Worker(
                client,
                task_queue=name,
                activities=acts,
                max_task_queue_activities_per_second=rate,
                graceful_shutdown_timeout=timedelta(seconds=10),
                **beat,
            )
        )
    return workers


def paced_rate(settings: Settings, queue: PacedQueue) -> float | None:
    """Starts per second of a paced queue: one per endpoint interval, None (unlimited) when
    pacing is off (`vast_pacing_scale` 0)."""
    interval = VAST_DEFAULT_MIN_INTERVALS[queue.endpoint] * settings.vast_pacing_scale
    return 1.0 / interval if interval > 0 else None


def provider_plan(
    queue: str, settings: Settings, activities: WorkerActivities
) -> list[tuple[str, list[Callable[..., Any]], float | None]]:
    """(task queue, activities, server-side start rate) of every provider queue."""
    shared = (vast_queue(queue), activities.vast, settings.vast_calls_per_second)
    return [
        shared,
        *((q.name(queue), activities.for_paced(q), paced_rate(settings, q)) for q in PACED_QUEUES),
    ]


@contextlib.asynccontextmanager
async def serving(
    client: Client,
    settings: Settings,
    secrets: SecretStore,
    endpoints: Endpoints,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    **worker_options: Any,
) -> AsyncIterator[WorkerActivities]:
    """Build the activities for `endpoints` and run the workers until the block exits; then
    close the activities' HTTP clients. `worker_options` go to `create_workers`."""
    activities = build_activities(
        settings,
        secrets,
        vast_base_url=endpoints.base_url,
        hf_base_url=endpoints.hf_base_url,
        civitai_base_url=endpoints.civitai_base_url,
        transport=transport,
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            for worker in create_workers(client, settings, activities, **worker_options):
                await stack.enter_async_context(worker)
            yield activities
    finally:
        await activities.aclose()


@contextlib.asynccontextmanager
async def provider(settings: Settings) -> AsyncIterator[tuple[Endpoints, SecretStore | None]]:
    """The configured provider, or an embedded simulator when no key and no URL are set."""
    if not settings.uses_simulator:
        yield (
            Provider(
                base_url=settings.vastai_base_url or DEFAULT_VAST_BASE_URL,
                hf_base_url=settings.hf_endpoint,
                civitai_base_url=settings.civitai_base_url,
            ),
            None,
        )
        return
    from vastsim import SimConfig, Simulator

    async with Simulator(
        SimConfig(speed=settings.sim_speed, fault_mix=settings.sim_fault_mix)
    ) as sim:
        log.info("no VASTAI_API_KEY: using the embedded simulator at %s", sim.base_url)
        fallback = EnvSecretStore(
            {
                "VASTAI_API_KEY": sim.api_key,
                "WARMPOOL_INSTANCE_SECRET": SIM_INSTANCE_SECRET,
            }
        )
        yield sim, fallback


async def run(settings: Settings, stop: asyncio.Event) -> None:
    async with provider(settings) as (where, fallback):
        extra = [fallback] if fallback else []
        secrets = secret_store(settings, *extra)
        configure_logging(
            json=settings.log_json,
            level=settings.log_level,
            secret_values=lambda: current_values(secrets),
        )
        client = await connect(settings)
        async with serving(client, settings, secrets, where):
            await ensure_token_watch(client, settings)  # periodic token validation
            log.info(
                "worker running on task queues %s and %s",
                settings.task_queue,
                ", ".join(provider_queues(settings.task_queue)),
            )
            await stop.wait()
            log.info("stopping: finishing running activities (up to 10 s)")


def metrics_runtime(address: str) -> Runtime:
    """A Temporal runtime serving Prometheus `/metrics` on `address`: the SDK's own worker
    metrics plus what activities count (e.g. `warmpool_keepalive_pings_total`)."""
    prometheus = PrometheusConfig(
        bind_address=address, counters_total_suffix=True, durations_as_seconds=True
    )
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus))


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)  # noqa: T201 - before logging is configured
        return 2
    Path(settings.secrets_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.worker_metrics_addr:
        try:
            Runtime.set_default(metrics_runtime(settings.worker_metrics_addr))
        except ValueError as exc:  # bad address, or the port is taken
            print(f"worker: WARMPOOL_WORKER_METRICS_ADDR: {exc}", file=sys.stderr)  # noqa: T201
            return 2

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
