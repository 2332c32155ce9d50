"""How fast is a lease? p50/p99 of the pool's `lease` update next to a bare update round trip.

Measures: a pool of 10 READY slots (dev server, real workers and activities, the simulator in a
child process), then --leases lease + release pairs through `warmpool.clients.pool` (what the CLI
and the gateway call), first on a quiet pool (all slots idle, no slot event in flight), then
back to back (each lease lands while the pool handles the previous release), then from
--concurrency callers at once (the 8-in-flight gate applies). The baseline is an update on a
workflow whose handler only returns its argument, on its own worker in the same process as the
pool's: --leases of them back to back, and one just before each quiet lease, after the same
idle wait. Only that pairing compares like with like: an update after half a second of idling
costs about 2-4 ms more than one in a hot loop. The callers run in a process of their own, as the
gateway and the CLI do: a caller sharing the worker's event loop would wait behind the work
each lease starts (the slot's message, its workflow task). A lease refused because every slot
is still being cleaned is retried and not counted.

Then where a lease's time goes, read from the workflows' histories: the server's queue
(workflow task scheduled -> started) and the worker (started -> completed, which includes the
completion RPC that persists the task), next to the same split for the quiet bare updates; the
rest of the caller's round trip is the RPCs around the task and, back to back, the wait for the
pool's workflow task already in flight (an update is handed to the next one). Then the
concurrent phase as a rate (lease + release cycles per second, lease attempts refused because
no slot was idle), and the pool's runs: how many times it continued-as-new, its failed workflow
tasks (each replays the run) and how long each run's first task waited in the queue. Last, the
leases asked for just before a continue-as-new and how long they took (the server aborts an
update that arrives during that task; the SDK re-sends it about a second later,
`warmpool.clients.pool` after 0.25 s), and the slowest leases.

    .venv/bin/python bench/lease_latency.py [--leases 300] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import NamedTuple

from harness import FAST_SIM, LOOSE_OFFERS, SimProcess, print_table, run, scaled_settings, stack
from temporalio import workflow
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from warmpool.clients import pool as pool_client
from warmpool.labels import pool_workflow_id
from warmpool.models import LeaseRequest, PoolConfig, PoolInput
from workflows.pool import WarmPoolWorkflow

READY_SLOTS = 10
QUIET_SAMPLES = 60
CAN_WINDOW_S = 0.25
"""A lease asked for at most this long before a pool run began met that continue-as-new."""


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
    handle = pool_client.pool_handle(client, pool)
    deadline = time.monotonic() + within
    while (status := await pool_client.query_status(handle)).idle_ready < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{status.idle_ready}/{n} idle READY: {status.counts}")
        await asyncio.sleep(0.2)


async def lease_and_release(client: Client, pool: str, leases: list[LeaseSample]) -> int:
    """One lease (noted in `leases`) and its release; returns how many attempts were refused
    first."""
    request = LeaseRequest(
        holder="bench", duration=timedelta(minutes=5), request_id=uuid.uuid4().hex
    )
    refused = 0
    while True:
        try:
            asked_at, started = time.time(), time.perf_counter()
            grant = await pool_client.acquire(client, pool, request)
            leases.append(LeaseSample(asked_at, (time.perf_counter() - started) * 1000))
            break
        except WorkflowUpdateFailedError:
            refused += 1
            await asyncio.sleep(0.05)  # every slot busy being cleaned: not a latency sample
    await pool_client.release(client, pool, grant.lease_id)
    return refused


class LeaseSample(NamedTuple):
    """A lease: when it was asked for (epoch seconds) and how long it took."""

    asked_at: float
    ms: float


def ms(leases: list[LeaseSample]) -> list[float]:
    return [lease.ms for lease in leases]


class Samples(NamedTuple):
    bare: list[float]
    quiet_bare: list[float]
    quiet: list[LeaseSample]
    sequential: list[LeaseSample]
    concurrent: list[LeaseSample]
    quiet_window: tuple[float, float]
    """Wall-clock (epoch seconds) start and end of the quiet phase."""
    sequential_window: tuple[float, float]
    concurrent_seconds: float
    concurrent_refused: int


def measure(target: str, pool: str, echo_id: str, leases: int, concurrency: int) -> Samples:
    """The callers' process: its own client, as the gateway and the CLI have."""
    return asyncio.run(_measure(target, pool, echo_id, leases, concurrency))


async def _measure(target: str, pool: str, echo_id: str, leases: int, concurrency: int) -> Samples:
    client = await Client.connect(target, data_converter=pydantic_data_converter)
    echo: WorkflowHandle[Echo, None] = client.get_workflow_handle(echo_id)
    bare = [await timed(lambda: echo.execute_update(Echo.echo, "x")) for _ in range(leases)]
    quiet: list[LeaseSample] = []
    quiet_bare: list[float] = []
    quiet_started = time.time()
    for _ in range(min(leases, QUIET_SAMPLES)):
        await wait_idle(client, pool, READY_SLOTS, within=60)
        await asyncio.sleep(0.5)  # no slot event in flight: the update alone
        quiet_bare.append(await timed(lambda: echo.execute_update(Echo.echo, "x")))
        await asyncio.sleep(0.1)
        await lease_and_release(client, pool, quiet)
    quiet_window = (quiet_started, time.time())
    sequential: list[LeaseSample] = []
    sequential_started = time.time()
    for _ in range(leases):
        await lease_and_release(client, pool, sequential)
    sequential_window = (sequential_started, time.time())
    concurrent: list[LeaseSample] = []

    async def caller(n: int) -> int:
        return sum([await lease_and_release(client, pool, concurrent) for _ in range(n)])

    started = time.perf_counter()
    refused = await asyncio.gather(*(caller(leases // concurrency) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return Samples(
        bare,
        quiet_bare,
        quiet,
        sequential,
        concurrent,
        quiet_window,
        sequential_window,
        seconds,
        sum(refused),
    )


class TaskSplit(NamedTuple):
    """One update's workflow task: milliseconds in the server's queue and in the worker."""

    queued: float
    worker: float


def update_tasks(
    events: list[HistoryEvent], name: str, window: tuple[float, float]
) -> list[TaskSplit]:
    """The workflow task that accepted each `name` update inside `window` (epoch seconds)."""

    def at(event: HistoryEvent) -> float:
        return event.event_time.ToNanoseconds() / 1e9

    found = []
    for i, event in enumerate(events):
        if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            continue
        accepted = event.workflow_execution_update_accepted_event_attributes
        if accepted.accepted_request.input.name != name or not window[0] <= at(event) <= window[1]:
            continue
        completed = next(
            e
            for e in reversed(events[:i])
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        started = events[completed.workflow_task_completed_event_attributes.started_event_id - 1]
        scheduled = events[
            completed.workflow_task_completed_event_attributes.scheduled_event_id - 1
        ]
        found.append(
            TaskSplit((at(started) - at(scheduled)) * 1000, (at(completed) - at(started)) * 1000)
        )
    return found


async def all_runs(client: Client, workflow_id: str) -> list[list[HistoryEvent]]:
    """Every run's history, oldest first (the pool continues-as-new during the bench)."""
    runs = []
    async for execution in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        handle: WorkflowHandle[object, object] = client.get_workflow_handle(
            workflow_id, run_id=execution.run_id
        )
        runs.append(list((await handle.fetch_history()).events))
    return sorted(runs, key=run_start)


def split_of(
    runs: list[list[HistoryEvent]], name: str, window: tuple[float, float]
) -> list[TaskSplit]:
    return [task for events in runs for task in update_tasks(events, name, window)]


def run_start(events: list[HistoryEvent]) -> int:
    return events[0].event_time.ToNanoseconds()


def runs_summary(runs: list[list[HistoryEvent]]) -> str:
    """The pool's runs and its failed workflow tasks: each failure replays the run (a tail)."""
    causes = Counter(
        WorkflowTaskFailedCause.Name(e.workflow_task_failed_event_attributes.cause)
        for events in runs
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    )
    listed = ", ".join(f"{n} {cause}" for cause, n in causes.most_common()) or "none"
    firsts = []
    for events in runs:
        scheduled, started = (
            next(e for e in events if e.event_type == kind).event_time.ToNanoseconds()
            for kind in (
                EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
            )
        )
        firsts.append(f"{(started - scheduled) / 1e6:.0f}")
    return (
        f"pool: {len(runs)} runs (continue-as-new), failed workflow tasks: {listed};"
        f" each run's first workflow task waited {', '.join(firsts)} ms in the queue"
    )


def continue_as_new_summary(asked: list[LeaseSample], runs: list[list[HistoryEvent]]) -> str:
    """The leases that met the pool's continue-as-new, and the slowest leases.

    An update that reaches the server while a run's last workflow task completes is aborted
    (temporalio/temporal#6485) and asked again on the new run (see warmpool/clients/pool.py).
    """
    starts = [run_start(events) / 1e9 for events in runs[1:]]
    met = [a.ms for a in asked if any(0 <= s - a.asked_at <= CAN_WINDOW_S for s in starts)]
    slowest = ", ".join(f"{a.ms:.0f}" for a in sorted(asked, key=lambda a: -a.ms)[:5])
    return (
        f"leases asked for at most {CAN_WINDOW_S * 1000:.0f} ms before one of the"
        f" {len(starts)} continue-as-new: {len(met)}"
        + (f" (p50 {statistics.median(met):.0f}, max {max(met):.0f} ms)" if met else "")
        + f"; slowest back-to-back and concurrent leases: {slowest} ms"
    )


def breakdown_row(label: str, client_ms: list[float], tasks: list[TaskSplit]) -> list[str]:
    p50 = statistics.median
    if not tasks:
        return [label, f"{p50(client_ms):.1f}", "-", "-", "-"]
    queued, worker = p50(t.queued for t in tasks), p50(t.worker for t in tasks)
    rest = p50(client_ms) - queued - worker
    return [label, f"{p50(client_ms):.1f}", f"{queued:.1f}", f"{worker:.1f}", f"{rest:.1f}"]


async def main(leases: int, concurrency: int) -> None:
    async with SimProcess(FAST_SIM) as sim:
        settings = scaled_settings(10, **LOOSE_OFFERS)
        async with stack(sim, settings) as bench:
            client = bench.client
            pool = f"lat{uuid.uuid4().hex[:6]}"
            config = PoolConfig(
                min_ready=READY_SLOTS, max_slots=READY_SLOTS, slot=bench.settings.slot_config()
            )
            handle = await client.start_workflow(
                WarmPoolWorkflow.run,
                PoolInput(pool=pool, config=config),
                id=pool_workflow_id(pool),
                task_queue=bench.queue,
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
            echo_runs = await all_runs(client, echo.id)
            pool_runs = await all_runs(client, pool_workflow_id(pool))
            await handle.signal(WarmPoolWorkflow.drain)
            await handle.result()

    print(f"lease latency, {READY_SLOTS} READY slots, {leases} samples per row (ms)")
    print_table(
        ["call", "p50", "p99", "max"],
        [
            ["bare update, back to back", *percentiles(samples.bare)],
            [
                f"bare update, quiet ({len(samples.quiet_bare)} samples)",
                *percentiles(samples.quiet_bare),
            ],
            [f"lease, quiet pool ({len(samples.quiet)} samples)", *percentiles(ms(samples.quiet))],
            ["lease, back to back (sequential)", *percentiles(ms(samples.sequential))],
            [f"lease, {concurrency} concurrent callers", *percentiles(ms(samples.concurrent))],
        ],
    )
    print()
    print("where a lease goes: p50 ms; the worker's share includes the completion RPC")
    print_table(
        ["call", "caller", "server queue", "worker", "rest (RPCs)"],
        [
            breakdown_row(
                "bare update, quiet",
                samples.quiet_bare,
                split_of(echo_runs, "echo", samples.quiet_window),
            ),
            breakdown_row(
                "lease, quiet pool",
                ms(samples.quiet),
                split_of(pool_runs, "lease", samples.quiet_window),
            ),
            breakdown_row(
                "lease, back to back",
                ms(samples.sequential),
                split_of(pool_runs, "lease", samples.sequential_window),
            ),
        ],
    )
    cycles = len(samples.concurrent)
    print()
    print(
        f"{concurrency} concurrent callers: {cycles / samples.concurrent_seconds:.1f} lease +"
        f" release cycles/s over {samples.concurrent_seconds:.1f} s,"
        f" {samples.concurrent_refused} lease attempts refused (no idle slot) for {cycles} granted"
    )
    print(runs_summary(pool_runs))
    print(continue_as_new_summary(samples.sequential + samples.concurrent, pool_runs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    run(main(args.leases, args.concurrency))
