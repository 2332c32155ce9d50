"""How fast is a lease? p50/p99 of the pool's `lease` update next to a bare update round trip.

Measures: a pool of 10 READY slots (dev server, real workers and activities, the simulator in a
child process), then --leases lease + release pairs through `warmpool.leasing` (what the CLI
and the gateway call), first on a quiet pool (all slots idle, no slot event in flight), then
back to back (each lease lands while the pool handles the previous release), then from
--concurrency callers at once (the 8-in-flight gate applies). Next to them, the same number
of updates on a workflow whose update handler only returns its argument, on its own worker in
the same process as the pool's. The callers run in a process of their own, as the gateway and
the CLI do: a caller sharing the worker's event loop would wait behind the work each lease
starts (the slot's signal, its workflow task). A lease refused because every slot is still
being cleaned is retried and not counted.

    .venv/bin/python bench/lease_latency.py [--leases 300] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import NamedTuple

from harness import FAST_SIM, LOOSE_OFFERS, SimProcess, print_table, run, scaled_settings, stack
from temporalio import workflow
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from warmpool import leasing
from warmpool.labels import pool_workflow_id
from warmpool.models import LeaseRequest, PoolConfig, PoolInput, PoolStatus
from workflows.pool import WarmPoolWorkflow

READY_SLOTS = 10
QUIET_SAMPLES = 40


@workflow.defn(name="BenchEcho", sandboxed=False)
class Echo:
    """The cheapest workflow with an update: the baseline round trip."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.update
    def echo(self, value: str) -> str:
        return value

    @workflow.signal
    def stop(self) -> None:
        self._done = True


def percentiles(samples_ms: list[float]) -> tuple[str, str, str]:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.1f}", f"{p99:.1f}", f"{max(ordered):.1f}"


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def wait_idle(client: Client, pool: str, n: int, within: float) -> None:
    handle = leasing.pool_handle(client, pool)
    deadline = time.monotonic() + within
    while (status := await handle.query(WarmPoolWorkflow.status)).idle_ready < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{status.idle_ready}/{n} idle READY: {status.counts}")
        await asyncio.sleep(0.2)


async def lease_and_release(client: Client, pool: str, samples: list[float]) -> None:
    request = LeaseRequest(
        holder="bench", duration=timedelta(minutes=5), request_id=uuid.uuid4().hex
    )
    while True:
        try:
            started = time.perf_counter()
            grant = await leasing.acquire(client, pool, request)
            samples.append((time.perf_counter() - started) * 1000)
            break
        except WorkflowUpdateFailedError:
            await asyncio.sleep(0.05)  # every slot busy being cleaned: not a latency sample
    await leasing.release(client, pool, grant.lease_id)


class Samples(NamedTuple):
    bare: list[float]
    quiet: list[float]
    sequential: list[float]
    concurrent: list[float]


def measure(target: str, pool: str, echo_id: str, leases: int, concurrency: int) -> Samples:
    """The callers' process: its own client, as the gateway and the CLI have."""
    return asyncio.run(_measure(target, pool, echo_id, leases, concurrency))


async def _measure(target: str, pool: str, echo_id: str, leases: int, concurrency: int) -> Samples:
    client = await Client.connect(target, data_converter=pydantic_data_converter)
    echo = client.get_workflow_handle_for(Echo.run, echo_id)
    bare = [await timed(lambda: echo.execute_update(Echo.echo, "x")) for _ in range(leases)]
    quiet: list[float] = []
    for _ in range(min(leases, QUIET_SAMPLES)):
        await wait_idle(client, pool, READY_SLOTS, within=60)
        await asyncio.sleep(0.5)  # no slot event in flight: the update alone
        await lease_and_release(client, pool, quiet)
    sequential: list[float] = []
    for _ in range(leases):
        await lease_and_release(client, pool, sequential)
    concurrent: list[float] = []

    async def caller(n: int) -> None:
        for _ in range(n):
            await lease_and_release(client, pool, concurrent)

    await asyncio.gather(*(caller(leases // concurrency) for _ in range(concurrency)))
    return Samples(bare, quiet, sequential, concurrent)


async def main(leases: int, concurrency: int) -> None:
    async with SimProcess(FAST_SIM) as sim:
        settings = scaled_settings(10, **LOOSE_OFFERS)
        async with stack(sim, settings) as bench:
            client = bench.client
            pool = f"lat{uuid.uuid4().hex[:6]}"
            config = PoolConfig(
                min_ready=READY_SLOTS, max_slots=READY_SLOTS, slot=bench.settings.slot_config()
            )
            await client.start_workflow(
                WarmPoolWorkflow.run,
                PoolInput(pool=pool, config=config),
                id=pool_workflow_id(pool),
                task_queue=bench.queue,
                result_type=PoolStatus,
            )
            await wait_idle(client, pool, READY_SLOTS, within=120)
            echo_queue = f"echo-{uuid.uuid4().hex[:6]}"
            async with Worker(client, task_queue=echo_queue, workflows=[Echo]):
                echo = await client.start_workflow(
                    Echo.run, id=f"bench-echo-{uuid.uuid4().hex[:6]}", task_queue=echo_queue
                )
                target = client.service_client.config.target_host
                spawn = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(1, mp_context=spawn) as callers:
                    samples = await asyncio.get_running_loop().run_in_executor(
                        callers, measure, target, pool, echo.id, leases, concurrency
                    )
                await echo.signal(Echo.stop)

            handle = leasing.pool_handle(client, pool)
            await handle.signal(WarmPoolWorkflow.drain)
            await handle.result()

    print(f"lease latency, {READY_SLOTS} READY slots, {leases} samples per row (ms)")
    print_table(
        ["call", "p50", "p99", "max"],
        [
            ["bare update round trip", *percentiles(samples.bare)],
            [f"lease, quiet pool ({len(samples.quiet)} samples)", *percentiles(samples.quiet)],
            ["lease, back to back (sequential)", *percentiles(samples.sequential)],
            [f"lease, {concurrency} concurrent callers", *percentiles(samples.concurrent)],
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    run(main(args.leases, args.concurrency))
