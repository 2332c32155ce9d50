"""Does a slot follow its instance's logs over real SSH while it starts, and act on them?

Dev server + worker(s) + real activities + the simulator, whose instances report a private
OpenSSH sshd on loopback (tests/sshd.py) as their `ssh_host`/`ssh_port`. The follower reads the
configured log path on the sshd host, i.e. a temp file here that the test appends to. A
`comfy_never_ready` fault holds the slot in PROBING (the collector keeps running) until the test
revives ComfyUI; the readiness timeout is long, so nothing but a log line can end that attempt.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, RetryState, TimeoutType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities import WorkerActivities, build_activities
from tests.conftest import start_dev_server
from tests.helpers import assert_eventually, in_state, new_queue, wait_status
from tests.integration.conftest import (
    FAST,
    FAST_SIM,
    INSTANCE_SECRET,
    Stack,
    assert_no_orphans,
    sim_secrets,
)
from tests.sshd import Sshd, ed25519_key, running_sshd
from tests.test_cli import STARTER, address_of, cli, environment
from vastsim import Fault, Simulator
from warmpool.models import SlotState, SlotStatus
from warmpool.secrets import FileSecretStore, SecretName
from warmpool.settings import Settings
from worker import create_workers

pytestmark = [pytest.mark.integration, pytest.mark.ssh]
S = SlotState
Make = Callable[..., Awaitable[Stack]]
FOLLOW = "ssh.follow_logs"
CLOSED = ("completed", "failed", "canceled", "timed_out")
HOLD = Fault(kind="comfy_never_ready", count=1)
"""The first instance never serves ComfyUI until `revive_comfy`: the slot waits in PROBING."""


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    home = tmp_path / "sshd"
    home.mkdir()
    with running_sshd(home) as server:
        yield server


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "provisioning.log"
    path.touch()
    return path


def ssh_overrides(sshd: Sshd, log: Path) -> dict[str, object]:
    """Settings for a fast collector on `log`; a long readiness timeout so only logs end it."""
    return {
        "ssh_logs": True,
        "ssh_user": sshd.username,
        "ssh_log_paths": [str(log)],
        "ssh_poll_interval_s": 0.05,
        "ssh_keepalive_interval_ms": 500,
        "ssh_keepalive_max_miss": 2,
        "ssh_heartbeat_timeout_s": 2,
        "ssh_retry_max_s": 0.5,
        "ssh_log_tail_lines": 20,
        "readiness_timeout_s": 120,
    }


async def ssh_stack(stack_factory: Make, sshd: Sshd, log: Path, key: str | None = None) -> Stack:
    sim = FAST_SIM.model_copy(update={"ssh_host": sshd.host, "ssh_port": sshd.port})
    stack = await stack_factory(sim, **ssh_overrides(sshd, log))
    stack.secrets.set(SecretName.SSH_KEY, key or sshd.client_key_pem)
    return stack


def append(path: Path, *lines: str) -> None:
    with path.open("a") as out:
        out.write("".join(f"{line}\n" for line in lines))


def truncate(path: Path) -> None:
    path.write_text("")


def log_lines(status: SlotStatus) -> list[str]:
    """The tail without the per-instance separators."""
    return [line for line in status.log_tail if not line.startswith("--- instance ")]


async def until(
    stack_env: WorkflowEnvironment,
    handle: WorkflowHandle[Any, SlotStatus],
    predicate: Callable[[SlotStatus], bool],
) -> SlotStatus:
    return await wait_status(stack_env, handle, predicate, attempts=1500)


async def follow_activities(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    """The slot's pending `ssh.follow_logs` activities (running or between retries)."""
    description = await handle.describe()
    return [
        pending
        for pending in description.raw_description.pending_activities
        if pending.activity_type.name == FOLLOW
    ]


async def every_event(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> AsyncIterator[HistoryEvent]:
    """The events of every run of the slot: it continues as new often on the test server."""
    run_id = handle.result_run_id
    while run_id:
        run = client.get_workflow_handle(handle.id, run_id=run_id)
        run_id = None
        async for event in run.fetch_history_events():
            yield event
            if event.HasField("workflow_execution_continued_as_new_event_attributes"):
                attrs = event.workflow_execution_continued_as_new_event_attributes
                run_id = attrs.new_execution_run_id


async def follow_outcomes(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> list[EventType.ValueType]:
    """How each `ssh.follow_logs` of the slot closed, in order (runs reuse event ids)."""
    outcomes: list[EventType.ValueType] = []
    scheduled: set[int] = set()
    closed = {f"activity_task_{how}_event_attributes" for how in CLOSED}
    async for event in every_event(client, handle):
        kind = event.WhichOneof("attributes")
        if kind == "workflow_execution_started_event_attributes":
            scheduled = set()
        elif kind == "activity_task_scheduled_event_attributes":
            if event.activity_task_scheduled_event_attributes.activity_type.name == FOLLOW:
                scheduled.add(event.event_id)
        elif kind in closed and getattr(event, kind).scheduled_event_id in scheduled:
            outcomes.append(event.event_type)
    return outcomes


async def signalled_lines(client: Client, handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Every line the collector signalled, re-sends included (what the slot deduplicated)."""
    lines: list[str] = []
    async for event in every_event(client, handle):
        if not event.HasField("workflow_execution_signaled_event_attributes"):
            continue
        attrs = event.workflow_execution_signaled_event_attributes
        if attrs.signal_name == "ssh_log":
            [batch] = pydantic_data_converter.payload_converter.from_payloads(
                list(attrs.input.payloads), [dict]
            )
            lines += batch["lines"]
    return lines


async def retire(stack: Stack, handle: WorkflowHandle[Any, SlotStatus]) -> SlotStatus:
    await handle.signal("retire", "test over")
    final = await handle.result()
    assert final.state == S.DONE
    assert_no_orphans(stack.sim)
    return final


async def test_lines_arrive_in_order_and_the_collector_is_cancelled_at_ready(
    stack_factory: Make, sshd: Sshd, log: Path
) -> None:
    stack = await ssh_stack(stack_factory, sshd, log)
    stack.sim.add_fault(HOLD)
    append(log, "boot 1", "boot 2")
    handle = await stack.start_slot()

    await until(stack.env, handle, lambda s: log_lines(s) == ["boot 1", "boot 2"])
    await until(stack.env, handle, in_state(S.PROBING))
    append(log, "pulling models 1", "pulling models 2")
    await until(stack.env, handle, lambda s: len(log_lines(s)) >= 4)
    append(log, *(f"progress {i}" for i in range(30)))  # more than the 20 lines kept
    status = await until(stack.env, handle, lambda s: "progress 29" in s.log_tail)
    assert status.state == S.PROBING, "the collector keeps running while ComfyUI is probed"
    assert status.instance is not None
    assert status.log_tail == [f"progress {i}" for i in range(10, 30)]
    assert status.log_lines_total == 1 + 4 + 30  # the instance separator, then every line once
    assert status.log_error is None

    await stack.sim.revive_comfy(status.instance.id)
    await until(stack.env, handle, in_state(S.READY))

    async def collector_gone() -> bool:
        return not await follow_activities(handle) and not sshd.session_pids()

    await assert_eventually(collector_gone, timeout=20, describe="collector gone")
    outcomes = await follow_outcomes(stack.client, handle)
    assert outcomes and set(outcomes) == {EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED}
    continued = [
        event
        async for event in every_event(stack.client, handle)
        if event.HasField("workflow_execution_continued_as_new_event_attributes")
    ]
    assert continued, "the tail and positions above survived continue-as-new (suggested at 50)"
    await retire(stack, handle)


async def test_a_fatal_line_destroys_the_instance_at_once_and_rents_another(
    stack_factory: Make, sshd: Sshd, log: Path
) -> None:
    stack = await ssh_stack(stack_factory, sshd, log)
    stack.sim.add_fault(HOLD)
    append(log, "Downloading model.safetensors")
    handle = await stack.start_slot()
    held = await until(stack.env, handle, lambda s: s.state == S.PROBING and bool(log_lines(s)))
    assert held.instance is not None
    first = held.instance

    fatal = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    append(log, fatal)

    async def destroyed() -> bool:
        return any(i.id == first.id and i.destroyed for i in stack.sim.instances())

    await assert_eventually(  # far below the 120 s readiness timeout
        destroyed, timeout=10, interval=0.01, describe="a fatal log line destroys at once"
    )
    truncate(log)  # the next rental's log (the same file here) starts clean

    status = await until(stack.env, handle, in_state(S.READY))
    assert status.counters.failures_by_reason == {"fatal_log": 1}
    assert status.instance is not None and status.instance.machine_id != first.machine_id
    assert first.machine_id in status.excluded_machines
    assert status.last_failure == f"fatal_log: {log}: {fatal}"
    assert log_lines(status) == ["Downloading model.safetensors", fatal]
    reasons = [t.reason for t in status.transitions if t.to_state == S.TERMINATING]
    assert reasons == [f"fatal log line: {fatal}"]
    await retire(stack, handle)


async def test_a_wrong_key_is_noted_once_and_the_slot_still_becomes_ready(
    stack_factory: Make, sshd: Sshd, log: Path
) -> None:
    stranger = ed25519_key()[0]
    stack = await ssh_stack(stack_factory, sshd, log, key=stranger)
    stack.sim.add_fault(HOLD)
    append(log, "never read")
    handle = await stack.start_slot()

    status = await until(stack.env, handle, lambda s: s.log_error is not None)
    assert status.log_error is not None and "rejected the SSH key" in status.log_error
    assert "PRIVATE KEY" not in status.log_error and stranger not in status.log_error
    assert status.state in (S.PROVISIONING, S.PROBING) and status.log_tail == []
    assert status.instance is not None
    await stack.sim.revive_comfy(status.instance.id)
    await until(stack.env, handle, in_state(S.READY))

    failed = [
        event.activity_task_failed_event_attributes
        async for event in every_event(stack.client, handle)
        if event.HasField("activity_task_failed_event_attributes")
    ]
    assert len(failed) == 1, "one attempt: a rejected key is not retried"
    assert failed[0].failure.application_failure_info.type == "SshAuthError"
    assert failed[0].failure.application_failure_info.non_retryable
    assert failed[0].retry_state == RetryState.RETRY_STATE_NON_RETRYABLE_FAILURE
    outcomes = await follow_outcomes(stack.client, handle)
    assert outcomes[-1] == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED not in outcomes[:-1]
    await retire(stack, handle)


async def test_slot_logs_cli_prints_the_tail_and_follows_new_lines(
    stack_factory: Make, sshd: Sshd, log: Path, tmp_path: Path
) -> None:
    stack = await ssh_stack(stack_factory, sshd, log)
    stack.sim.add_fault(HOLD)
    append(log, "line one", "line two")
    handle = await stack.start_slot()
    status = await until(stack.env, handle, lambda s: len(log_lines(s)) == 2)
    assert status.instance is not None
    expected = [f"--- instance {status.instance.id} ---", "line one", "line two"]
    env = environment(address_of(stack.env), WARMPOOL_TASK_QUEUE=stack.queue)
    pool = f"it-{stack.queue}"

    shown = await cli(env, tmp_path, "slot", "logs", pool, "0", "--json")
    assert shown.code == 0, shown.stderr
    assert json.loads(shown.stdout)["lines"] == expected

    follow = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STARTER),
        "slot",
        "logs",
        "--pool",
        pool,
        "--follow",
        "--interval",
        "0.1",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert follow.stdout is not None
        assert [await read_line(follow.stdout) for _ in expected] == expected
        append(log, "line three")
        assert await read_line(follow.stdout) == "line three"
        follow.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            rest, err = await follow.communicate()
        assert follow.returncode == 0, err.decode()
        assert rest.decode() == "" and err.decode() == ""
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()

    unknown = await cli(env, tmp_path, "slot", "logs", "nosuchpool", "3")
    assert unknown.code == 2, "an unknown slot is a bad request (README's exit codes)"
    assert "warmpool/nosuchpool/slot-3" in unknown.one_error_line()
    await stack.sim.revive_comfy(status.instance.id)
    await retire(stack, handle)


async def read_line(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(20):
        raw = await stream.readline()
    assert raw, "the follow ended early"
    return raw.decode().rstrip("\n")


# ---- a worker killed mid-follow ------------------------------------------------------------

ACTIVITY_WORKER = """
import asyncio
from datetime import timedelta

from temporalio.worker import Worker

from activities import build_activities
from warmpool.settings import load_settings
from warmpool.temporal import connect
from warmpool.secrets import secret_store


async def main() -> None:
    settings = load_settings()
    url = settings.vastai_base_url
    assert url is not None
    acts = build_activities(settings, secret_store(settings), vast_base_url=url)
    beat = timedelta(seconds=0.2)
    async with Worker(
        await connect(settings),
        task_queue=settings.task_queue,
        activities=acts.main,
        max_heartbeat_throttle_interval=beat,
        default_heartbeat_throttle_interval=beat,
    ):
        print("polling", flush=True)
        await asyncio.Event().wait()


asyncio.run(main())
"""
"""A worker process for the main queue's activities, wired as worker.py wires them."""


@dataclass
class WorkerProcess:
    proc: asyncio.subprocess.Process

    def runs(self, pending: Any) -> bool:
        """Did this process start the pending activity's current attempt? (identity pid@host)"""
        return bool(pending.last_worker_identity.startswith(f"{self.proc.pid}@"))


@asynccontextmanager
async def activity_workers(
    count: int, env: dict[str, str], cwd: Path
) -> AsyncIterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    try:
        for n in range(count):
            stderr = cwd / f"activity-worker-{n}.stderr"
            with stderr.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    ACTIVITY_WORKER,
                    env=env,
                    cwd=cwd,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                )
            procs.append(WorkerProcess(proc))
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                started = await proc.stdout.readline()
            assert started == b"polling\n", tail_of(stderr)
        yield procs
    finally:
        for worker in procs:
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()


def tail_of(path: Path) -> str:
    return path.read_text()[-3000:]


@asynccontextmanager
async def workflows_only_stack(
    env: WorkflowEnvironment, sim_config: Any, **overrides: object
) -> AsyncIterator[Stack]:
    """The slot workflow and provider activities here; main-queue activities in other processes."""
    async with AsyncExitStack() as exits:
        sim = await exits.enter_async_context(Simulator(sim_config))
        settings = Settings(**{**FAST, **overrides})
        secrets = sim_secrets(sim)
        acts = build_activities(settings, secrets, vast_base_url=sim.base_url)
        exits.push_async_callback(acts.aclose)
        queue = new_queue()
        for worker in create_workers(
            env.client,
            settings,
            WorkerActivities(main=[], vast=acts.vast, client=acts.client),
            task_queue=queue,
            heartbeat_throttle=timedelta(seconds=0.2),
        ):
            await exits.enter_async_context(worker)
        yield Stack(env, sim, settings, queue, secrets, acts)


@pytest.fixture(scope="module")
async def steady_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server without the tiny continue-as-new suggestion: the follow stays one activity."""
    env = await start_dev_server()
    yield env
    await env.shutdown()


async def test_a_worker_killed_mid_follow_is_replaced_and_resumes_from_its_heartbeat(
    steady_env: WorkflowEnvironment, sshd: Sshd, log: Path, tmp_path: Path
) -> None:
    secrets_dir = tmp_path / "secrets"
    FileSecretStore(secrets_dir).set(SecretName.SSH_KEY, sshd.client_key_pem)
    sim = FAST_SIM.model_copy(update={"ssh_host": sshd.host, "ssh_port": sshd.port})
    async with workflows_only_stack(steady_env, sim, **ssh_overrides(sshd, log)) as stack:
        env = environment(
            address_of(steady_env),
            WARMPOOL_TASK_QUEUE=stack.queue,
            VASTAI_BASE_URL=stack.sim.base_url,
            VASTAI_API_KEY=stack.sim.api_key,
            WARMPOOL_INSTANCE_SECRET=INSTANCE_SECRET,
            WARMPOOL_SECRETS_DIR=str(secrets_dir),
            PYTHONPATH=str(STARTER.parent),
        )
        async with activity_workers(2, env, tmp_path) as workers:
            stack.sim.add_fault(HOLD)
            before = [f"before kill {i}" for i in range(8)]
            after = [f"after kill {i}" for i in range(4)]
            append(log, *before)
            handle = await stack.start_slot()
            await until(stack.env, handle, lambda s: log_lines(s) == before)

            async def heartbeated_everything() -> bool:
                pending = await follow_activities(handle)
                if len(pending) != 1 or not pending[0].heartbeat_details.payloads:
                    return False
                details = json.loads(pending[0].heartbeat_details.payloads[0].data)
                return bool(details["lines_seen"] == len(before))

            await assert_eventually(heartbeated_everything, timeout=20)
            [running] = await follow_activities(handle)
            [victim] = [w for w in workers if w.runs(running)]
            os.kill(victim.proc.pid, signal.SIGKILL)
            await victim.proc.wait()
            append(log, *after)

            status = await until(stack.env, handle, lambda s: log_lines(s) == before + after)
            [retried] = await follow_activities(handle)
            assert retried.attempt == 2 and not victim.runs(retried)
            assert retried.last_failure.timeout_failure_info.timeout_type == (
                TimeoutType.TIMEOUT_TYPE_HEARTBEAT
            )
            assert status.log_lines_total == 1 + len(before) + len(after)
            assert await signalled_lines(stack.client, handle) == before + after, (
                "the retried attempt resumed from the heartbeated offset: nothing re-sent"
            )

            assert status.instance is not None
            await stack.sim.revive_comfy(status.instance.id)
            await until(stack.env, handle, in_state(S.READY))
            await assert_eventually(lambda: no_follow(handle), timeout=20)
            await retire(stack, handle)


async def no_follow(handle: WorkflowHandle[Any, Any]) -> bool:
    return not await follow_activities(handle)
