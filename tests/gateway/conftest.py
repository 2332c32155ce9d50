"""A gateway in front of a real stack: dev server + simulator + worker + a READY pool.

`gateway_stack()` is an async context manager, so each test module builds one stack (module
fixture) with the settings it needs. The gateway runs in-process under uvicorn on a loopback
port and is reached over real HTTP and websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.helpers import Stranger, assert_eventually, new_queue
from tests.integration.conftest import FAST, FAST_SIM, beside_stranger, sim_secrets
from vastsim import SimConfig, Simulator
from warmpool.clients import pool as pool_client
from warmpool.clients.token_watch import ensure_token_watch
from warmpool.gateway.app import create_app
from warmpool.labels import pool_workflow_id
from warmpool.models import PoolConfig, PoolInput, PoolStatus
from warmpool.secrets import FileSecretStore, LayeredSecretStore
from warmpool.settings import Settings
from worker import metrics_runtime, serving

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = f"admin-{uuid.uuid4().hex}"
GATEWAY = {
    "gateway_lease_cache_s": 0.2,
    "gateway_connect_timeout_s": 1.0,
    "gateway_read_timeout_s": 5.0,
    "gateway_temporal_timeout_s": 5.0,
    "gateway_max_wait_s": 15.0,
    "gateway_token_check_timeout_s": 20.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class InProcessServer(uvicorn.Server):
    """uvicorn without its signal handlers: the test process keeps its own Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class GatewayStack:
    env: WorkflowEnvironment
    sim: Simulator
    settings: Settings
    pool: str
    secrets: LayeredSecretStore
    url: str
    watch_id: str
    worker_metrics_url: str | None
    stranger: Stranger | None = None
    """Another tenant's ComfyUI on the instances' public address, port 8188 (no token, ever)."""

    @property
    def client(self) -> Client:
        return self.env.client

    @property
    def handle(self) -> WorkflowHandle[Any, PoolStatus]:
        return self.client.get_workflow_handle(pool_workflow_id(self.pool), result_type=PoolStatus)

    def http(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kw)

    def admin(self) -> dict[str, str]:
        return {"X-Admin-Key": ADMIN_KEY}

    async def status(self) -> PoolStatus:
        return await pool_client.query_status(self.handle)

    async def wait_pool(
        self, predicate: Callable[[PoolStatus], bool], within: float = 60
    ) -> PoolStatus:
        return await assert_eventually(
            self.status, predicate, timeout=within, describe="pool condition"
        )


async def serve(app: Any, port: int = 0) -> tuple[InProcessServer, asyncio.Task[None], str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio"
    )
    server = InProcessServer(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{bound}"


@asynccontextmanager
async def gateway_stack(
    env: WorkflowEnvironment,
    tmp: Path,
    *,
    sim_config: SimConfig = FAST_SIM,
    pool_config: PoolConfig | None = None,
    worker_metrics: bool = False,
    **overrides: object,
) -> AsyncIterator[GatewayStack]:
    async with AsyncExitStack() as exits:
        stranger = beside_stranger(exits, sim_config.public_host)
        sim_config = sim_config.model_copy(update={"public_host": stranger.host})
        sim = await exits.enter_async_context(Simulator(sim_config))
        queue = new_queue()
        pool = f"gw-{uuid.uuid4().hex[:8]}"
        metrics_url = None
        values: dict[str, Any] = {**FAST, **GATEWAY, **overrides}
        values.update(task_queue=queue, gateway_pools=[pool], secrets_dir=tmp / "secrets")
        if worker_metrics:
            address = f"127.0.0.1:{free_port()}"
            metrics_url = f"http://{address}/metrics"
            values["gateway_worker_metrics"] = [metrics_url]
        settings = Settings(**values)
        secrets = sim_secrets(sim, FileSecretStore(settings.secrets_dir), ADMIN_API_KEY=ADMIN_KEY)
        worker_client = env.client
        if worker_metrics:
            # What worker.py does with WARMPOOL_WORKER_METRICS_ADDR, on a client of its own.
            worker_client = await Client.connect(
                env.client.service_client.config.target_host,
                namespace=env.client.namespace,
                data_converter=pydantic_data_converter,
                runtime=metrics_runtime(address),
            )
        await exits.enter_async_context(
            serving(
                worker_client,
                settings,
                secrets,
                sim,
                task_queue=queue,
                heartbeat_throttle=timedelta(seconds=0.2),
            )
        )
        watch_id = f"warmpool/tokens-{queue}"
        watch = await ensure_token_watch(env.client, settings, workflow_id=watch_id)
        exits.push_async_callback(watch.terminate, "test over")
        config = pool_config or PoolConfig(min_ready=1, max_slots=2)
        handle = await env.client.start_workflow(
            "WarmPoolWorkflow",
            PoolInput(pool=pool, config=config.model_copy(update={"slot": settings.slot_config()})),
            id=pool_workflow_id(pool),
            task_queue=queue,
            result_type=PoolStatus,
        )
        app = create_app(settings, env.client, secrets, token_watch_id=watch_id)
        server, task, url = await serve(app)
        stack = GatewayStack(
            env, sim, settings, pool, secrets, url, watch_id, metrics_url, stranger
        )
        try:
            await stack.wait_pool(lambda s: s.idle_ready >= 1)
            yield stack
        finally:
            server.should_exit = True
            await task
            await drain(stack, handle)


async def drain(stack: GatewayStack, handle: WorkflowHandle[Any, PoolStatus]) -> None:
    """Release every lease, drain the pool, and prove no instance outlived it."""
    from warmpool.clients import pool as pool_client

    # A test may have stored a bad Vast.ai key: destroys need the real one.
    for leftover in stack.settings.secrets_dir.glob("*"):
        leftover.unlink()
    await handle.signal("drain")
    for lease in (await stack.status()).active_leases:
        await pool_client.release(stack.client, stack.pool, lease.lease_id)
    try:
        final = await asyncio.wait_for(handle.result(), 60)
    except TimeoutError:
        raise AssertionError(f"pool did not drain: {(await stack.status()).slots}") from None
    assert final.slots == []
    assert stack.sim.live_instances() == [], "an instance outlived its pool"
