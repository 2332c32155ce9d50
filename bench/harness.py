"""What does every benchmark need? A whole stack in one process, slots, and a few meters.

`stack()` starts a Temporal dev server (in memory, our search attributes), the real activities
(`build_activities`) and the real workers (`create_workers`) against a simulator, which runs
in-process (`Simulator`) or in a child process (`SimProcess`, so that the worker's CPU and
memory can be measured on their own). Slots are started as `WarmSlotWorkflow` directly and
waited on through the `status` query, or for many slots through the visibility count.

Benchmarks print tables and never assert: a figure that changes is news, not a failure.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import statistics
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities import build_activities
from vastsim import InstanceInfo, SimConfig, Simulator
from warmpool import search_attributes as sa
from warmpool.clients import slot as slot_client
from warmpool.devserver import TEMPORAL
from warmpool.labels import slot_workflow_id
from warmpool.logging import configure_logging
from warmpool.models import SlotInput, SlotState, SlotStatus
from warmpool.names import Slot
from warmpool.secrets import EnvSecretStore, LayeredSecretStore, current_values
from warmpool.settings import Settings
from worker import HEARTBEAT_THROTTLE, MAX_CACHED_WORKFLOWS, Endpoints, create_workers

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_SECRET = "bench-instance-secret"

LOOSE_OFFERS: dict[str, object] = {
    "min_direct_ports": 2,
    "min_inet_down": 0,
    "min_reliability": 0,
    "max_dph": 5,
}
"""Constraints that about 40% of the simulator's catalogue passes (the defaults pass ~25%)."""

FAST_SIM = SimConfig(provision_s=0.1, created_s=0.1, loading_s=0.2, comfy_boot_s=0.4)
"""An instance runs ComfyUI 0.8 s after the rent (the default simulator takes 7 s)."""

_SCALED_MS = (
    "poll_active_ms",
    "poll_idle_ms",
    "keepalive_interval_ms",
    "token_cache_ms",
    "token_check_ms",
)
_SCALED_S = (
    "provision_timeout_s",
    "fatal_grace_s",
    "readiness_timeout_s",
    "readiness_initial_s",
    "readiness_max_s",
    "retry_backoff_initial_s",
    "retry_backoff_max_s",
)


def production(name: str) -> Any:
    """A setting's shipped default (not the environment's value)."""
    return Settings.model_fields[name].default


def scaled_settings(scale: float, **overrides: object) -> dict[str, object]:
    """Production defaults with every interval and deadline divided by `scale`.

    The timeouts of single network calls (TCP, HTTP, keepalive ping) are kept: they only
    matter when a call hangs, and shrinking them would turn a busy loopback into failures.
    The provider call budget is multiplied, so it stays the same per scaled second.
    """
    values: dict[str, object] = {
        name: max(1, round(production(name) / scale)) for name in _SCALED_MS
    }
    values.update({name: production(name) / scale for name in _SCALED_S})
    values["vast_calls_per_second"] = production("vast_calls_per_second") * scale
    values["vast_pacing_scale"] = production("vast_pacing_scale") / scale
    return {**values, **overrides}


class Provider(Endpoints, Protocol):
    """Where the activities send their calls, and the key they use (a `Simulator` is one)."""

    @property
    def api_key(self) -> str: ...


# ---- the simulator in a child process ------------------------------------------------------


def _serve_simulator(config: SimConfig, conn: Connection) -> None:
    asyncio.run(_simulate(config, conn))


async def _simulate(config: SimConfig, conn: Connection) -> None:
    """Serve until the parent says "stop" or goes away; answer "counts" meanwhile."""
    loop = asyncio.get_running_loop()
    async with Simulator(config) as sim:
        conn.send(
            {
                "base_url": sim.base_url,
                "hf_base_url": sim.hf_base_url,
                "civitai_base_url": sim.civitai_base_url,
                "api_key": sim.api_key,
            }
        )
        while True:
            try:
                message = await loop.run_in_executor(None, conn.recv)
            except EOFError:
                return
            if message == "stop":
                return
            if message == "instances":
                conn.send([info.model_dump() for info in sim.instances()])
            elif message == "offers":
                conn.send(sim.offers())
            else:
                conn.send(sim.call_counts)


class SimProcess:
    """A simulator in a child process: its CPU never counts as the worker's."""

    def __init__(self, config: SimConfig) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_simulator, args=(config, child), daemon=True)
        self._urls: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> SimProcess:
        self._proc.start()
        self._urls = await asyncio.to_thread(self._conn.recv)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._conn.send("stop")
        await asyncio.to_thread(self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.kill()

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    @property
    def base_url(self) -> str:
        return self._urls["base_url"]

    @property
    def hf_base_url(self) -> str:
        return self._urls["hf_base_url"]

    @property
    def civitai_base_url(self) -> str:
        return self._urls["civitai_base_url"]

    @property
    def api_key(self) -> str:
        return self._urls["api_key"]

    async def call_counts(self) -> dict[str, int]:
        """Calls per endpoint key since the simulator started (as `Simulator.call_counts`)."""
        async with self._lock:
            self._conn.send("counts")
            counts: dict[str, int] = await asyncio.to_thread(self._conn.recv)
        return counts

    async def instances(self) -> list[InstanceInfo]:
        """Every instance ever created, destroyed ones included (as `Simulator.instances`)."""
        async with self._lock:
            self._conn.send("instances")
            rows: list[dict[str, Any]] = await asyncio.to_thread(self._conn.recv)
        return [InstanceInfo.model_validate(row) for row in rows]

    async def offers(self) -> list[dict[str, Any]]:
        """The catalogue as the search shows it (as `Simulator.offers`)."""
        async with self._lock:
            self._conn.send("offers")
            offers: list[dict[str, Any]] = await asyncio.to_thread(self._conn.recv)
        return offers


# ---- the stack --------------------------------------------------------------------------------


@dataclass
class Bench:
    env: WorkflowEnvironment
    settings: Settings
    queue: str
    pool: str = "bench"

    @property
    def client(self) -> Client:
        return self.env.client

    async def start_slot(self, index: int, **config: object) -> WorkflowHandle[Any, SlotStatus]:
        """`config` overrides fields of the settings' SlotConfig (`SlotConfig.merged`)."""
        slot_config = self.settings.slot_config().merged(config)
        return await self.client.start_workflow(
            Slot.WORKFLOW,
            SlotInput(pool=self.pool, index=index, config=slot_config),
            id=slot_workflow_id(self.pool, index),
            task_queue=self.queue,
            result_type=SlotStatus,
        )

    async def count(self, *states: SlotState) -> int:
        """Slots of the pool in one of `states`, from visibility (cheap for 1,000 slots)."""
        wanted = " OR ".join(f"{sa.SLOT_STATE.name}='{s.value}'" for s in states)
        query = f"{sa.POOL_NAME.name}='{self.pool}' AND ({wanted})"
        return (await self.client.count_workflows(query)).count

    async def wait_count(self, n: int, *states: SlotState, within: float) -> float:
        """Seconds until `n` slots are in `states`; TimeoutError with the count reached."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (seen := await self.count(*states)) < n:
            if loop.time() - started > within:
                raise TimeoutError(f"{seen}/{n} slots in {[s.value for s in states]}")
            await asyncio.sleep(0.5)
        return loop.time() - started

    async def retire(self, handles: Iterable[WorkflowHandle[Any, SlotStatus]]) -> None:
        """Retire slots and wait until each has destroyed its instance."""
        handles = list(handles)
        await asyncio.gather(*(slot_client.retire(h, "benchmark over") for h in handles))
        await asyncio.gather(*(h.result() for h in handles))

    async def retire_all(self, n: int, *, within: float) -> None:
        """Retire slots 0..n-1 and wait until visibility shows them DONE (for many slots)."""
        gate = asyncio.Semaphore(50)

        async def retire(index: int) -> None:
            async with gate:
                handle = self.client.get_workflow_handle(slot_workflow_id(self.pool, index))
                await slot_client.retire(handle, "benchmark over")

        await asyncio.gather(*(retire(i) for i in range(n)))
        await self.wait_count(n, SlotState.DONE, within=within)


@asynccontextmanager
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL),
        search_attributes=sa.ALL,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def another_client(client: Client) -> Client:
    """A second connection to the same server (the SDK allows one worker per queue and client)."""
    return await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=pydantic_data_converter,
    )


@asynccontextmanager
async def stack(
    provider: Provider,
    settings: dict[str, object],
    *,
    heartbeat_throttle: timedelta = HEARTBEAT_THROTTLE,
    replicas: int = 1,
    log_level: str = "ERROR",
    max_cached_workflows: int = MAX_CACHED_WORKFLOWS,
) -> AsyncIterator[Bench]:
    """Dev server + `replicas` pairs of workers sharing one set of activities (one listing).

    Several pairs stand for one process with more activity slots: each SDK worker runs at most
    100 activities at once, and every READY slot holds one (its watch). The SDK allows one
    worker per task queue and client, so each extra pair has its own client. Library logs go to
    stderr at `log_level`, redacted; the tables go to stdout.
    """
    async with AsyncExitStack() as exits:
        env = await exits.enter_async_context(dev_server())
        built = Settings(**settings)  # type: ignore[arg-type]
        secrets = LayeredSecretStore(
            [
                EnvSecretStore(
                    {
                        "VASTAI_API_KEY": provider.api_key,
                        "WARMPOOL_INSTANCE_SECRET": INSTANCE_SECRET,
                    }
                )
            ]
        )
        configure_logging(
            json=False, level=log_level, secret_values=lambda: current_values(secrets)
        )
        acts = build_activities(
            built,
            secrets,
            vast_base_url=provider.base_url,
            hf_base_url=provider.hf_base_url,
            civitai_base_url=provider.civitai_base_url,
        )
        exits.push_async_callback(acts.aclose)
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        for replica in range(replicas):
            client = env.client if replica == 0 else await another_client(env.client)
            for worker in create_workers(
                client,
                built,
                acts,
                task_queue=queue,
                heartbeat_throttle=heartbeat_throttle,
                max_cached_workflows=max_cached_workflows,
            ):
                await exits.enter_async_context(worker)
        yield Bench(env, built, queue)


async def wait_for(
    handle: WorkflowHandle[Any, SlotStatus],
    predicate: Callable[[SlotStatus], bool],
    *,
    within: float,
    every: float = 0.05,
) -> SlotStatus:
    """Query `status` until `predicate` holds; TimeoutError naming the last state otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status = await slot_client.query_status(handle)
        if predicate(status):
            return status
        if loop.time() > deadline:
            raise TimeoutError(f"{handle.id} still {status.state.value}: {status.last_failure}")
        await asyncio.sleep(every)


def in_state(*states: SlotState) -> Callable[[SlotStatus], bool]:
    return lambda status: status.state in states


def run(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run`, then exit without interpreter teardown.

    The Temporal SDK's Rust threads can outlive the event loop and crash CPython's finalization
    (SIGABRT "PyGILState_Release ... must be current", or SIGSEGV) after the tables are printed:
    temporalio/sdk-python#300. Every context manager has exited by then, so nothing is lost.
    """
    asyncio.run(main)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---- meters and tables -----------------------------------------------------------------------


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory from /proc (psutil is not installed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_map(pid: int | str = "self") -> dict[str, float]:
    """Resident MB by kind of mapping: brk heap, anonymous mmaps, thread stacks, files."""
    kinds: dict[str, float] = {"heap": 0.0, "anonymous": 0.0, "stacks": 0.0, "files": 0.0}
    kind = "files"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            name = head[5] if len(head) > 5 else ""
            kind = (
                "heap"
                if name == "[heap]"
                else "stacks"
                if name.startswith("[stack")
                else "anonymous"
                if not name or name.startswith("[anon")
                else "files"
            )
        elif head[0] == "Rss:":
            kinds[kind] += int(head[1]) / 1024
    return kinds


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of this process (all threads), or of another process by pid."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def heap_growth(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 15
) -> list[tuple[str, float, int]]:
    """Where the Python heap grew between two tracemalloc snapshots: (file, MB, blocks).

    Only Python allocations show here; OpenSSL contexts and the SDK's Rust core do not, so
    compare the total with the RSS growth.
    """
    root = str(ROOT) + "/"
    stats = after.compare_to(before, "filename")
    rows = [
        (
            str(stat.traceback[0].filename).replace(root, "").split("site-packages/")[-1],
            stat.size_diff / 2**20,
            stat.count_diff,
        )
        for stat in stats
    ]
    rows.sort(key=lambda row: row[1], reverse=True)
    total = ("(all files)", sum(r[1] for r in rows), sum(r[2] for r in rows))
    return [total, *rows[:top]]


def summary(values: Sequence[float]) -> str:
    if not values:
        return "-"
    p50, mean = statistics.median(values), statistics.fmean(values)
    return f"p50 {p50:.2f} / mean {mean:.2f} / max {max(values):.2f}"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Plain text: the first column left-aligned, numbers right-aligned, headers left."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        pairs = enumerate(zip(row, widths, strict=True))
        line = [c.rjust(w) if i and n else c.ljust(w) for i, (c, w) in pairs]
        print("  ".join(line).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
