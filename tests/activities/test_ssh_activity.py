"""Does `ssh.follow_logs` deliver each log line to the slot once, across crashes and retries?

A real sshd on loopback (tests/sshd.py) and a real Temporal dev server, where a stand-in slot
workflow records the `ssh_log` signals. Most tests drive the activity through `ActivityEnvironment`
(heartbeats captured, cancellation controlled); one runs it in a worker under
the slot's retry policy (`workflows.options.SSH_FOLLOW_RETRY`) while sshd is killed and restarted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    from temporalio.client import Client, WorkflowHandle
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.ssh import (
        SshFollowInput,
        SshFollowResult,
        SshLogActivities,
    )
    from tests.conftest import start_dev_server
    from tests.helpers import assert_eventually
    from tests.sshd import Sshd, ed25519_key, running_sshd
    from warmpool.models import SshConfig, SshLogBatch
    from warmpool.names import Slot
    from warmpool.ssh import LogCursor, SshConnectError
    from workflows.options import SSH_FOLLOW_RETRY

TASK_QUEUE = "ssh-activity-test"

pytestmark = pytest.mark.ssh


@workflow.defn(name="SshLogRecorder")
class SshLogRecorder:
    """Stands in for the slot: records `ssh_log` batches; given an input, runs the activity too."""

    def __init__(self) -> None:
        self.batches: list[SshLogBatch] = []

    @workflow.run
    async def run(self, follow: SshFollowInput | None) -> SshFollowResult | None:
        if follow is None:
            await workflow.wait_condition(lambda: False)
            return None
        result: SshFollowResult = await workflow.execute_activity(
            "ssh.follow_logs",
            follow,
            result_type=SshFollowResult,
            start_to_close_timeout=timedelta(minutes=1),
            heartbeat_timeout=timedelta(seconds=5),
            retry_policy=dataclasses.replace(
                SSH_FOLLOW_RETRY,
                initial_interval=timedelta(milliseconds=100),
                maximum_interval=timedelta(milliseconds=400),
            ),
        )
        return result

    @workflow.signal(name=Slot.SSH_LOG)
    def ssh_log(self, batch: SshLogBatch) -> None:
        self.batches.append(batch)

    @workflow.query
    def received(self) -> list[SshLogBatch]:
        return self.batches


@pytest.fixture(scope="module")
async def temporal() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    home = tmp_path / "sshd"
    home.mkdir()
    with running_sshd(home) as server:
        yield server


@pytest.fixture
def key(sshd: Sshd) -> dict[str, str | None]:
    """The worker's "secret store": tests swap the key in it."""
    return {"pem": sshd.client_key_pem}


@pytest.fixture
def activities(key: dict[str, str | None]) -> SshLogActivities:
    return SshLogActivities(
        key_provider=lambda: key["pem"], redact=lambda line: line.replace("hf_secret", "***")
    )


@pytest.fixture
async def worker(temporal: WorkflowEnvironment, activities: SshLogActivities) -> AsyncIterator[str]:
    task_queue = f"{TASK_QUEUE}-{uuid.uuid4()}"
    async with Worker(
        temporal.client,
        task_queue=task_queue,
        workflows=[SshLogRecorder],
        activities=[activities.follow_logs],
    ):
        yield task_queue


@pytest.fixture
async def slot(
    temporal: WorkflowEnvironment, worker: str
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """A running recorder with no activity of its own: tests run the activity beside it."""
    handle = await temporal.client.start_workflow(
        SshLogRecorder.run, None, id=f"slot-{uuid.uuid4()}", task_queue=worker
    )
    yield handle
    await handle.terminate()


def follow_input(
    sshd: Sshd,
    workflow_id: str,
    *paths: Path,
    batch_lines: int = 2,
    resume_from: LogCursor | None = None,
    **ssh: Any,
) -> SshFollowInput:
    """`ssh` overrides fields of the input's `SshConfig`."""
    return SshFollowInput(
        workflow_id=workflow_id,
        instance_id=42,
        host=sshd.host,
        port=sshd.port,
        ssh=SshConfig(
            username=sshd.username,
            paths=[str(path) for path in paths],
            **{"poll_interval": timedelta(seconds=0.05), **ssh},
        ),
        batch_lines=batch_lines,
        resume_from=LogCursor() if resume_from is None else resume_from,
    )


def activity_env(
    client: Client | None, heartbeats: list[Any], resume_from: Any = None
) -> ActivityEnvironment:
    env = ActivityEnvironment(client=client)
    env.info = dataclasses.replace(
        env.info, heartbeat_details=[] if resume_from is None else [resume_from]
    )
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])
    return env


def append(path: Path, *lines: str) -> None:
    with path.open("a") as out:
        out.write("".join(f"{line}\n" for line in lines))


async def batches(handle: WorkflowHandle[Any, Any]) -> list[SshLogBatch]:
    received: list[SshLogBatch] = await handle.query(SshLogRecorder.received)
    return received


def raw_lines(received: list[SshLogBatch]) -> list[str]:
    return [line for batch in received for line in batch.lines]


def kept_lines(received: list[SshLogBatch]) -> list[str]:
    """What a slot keeps when it applies `SshLogBatch.unseen` (the receiver's dedup rule)."""
    seen: dict[str, tuple[int, int]] = {}
    kept: list[str] = []
    for batch in received:
        kept += batch.unseen(seen.get(batch.path))
        seen[batch.path] = max(seen.get(batch.path, (0, 0)), batch.position)
    return kept


async def follow_until_cancelled(
    env: ActivityEnvironment,
    activities: SshLogActivities,
    input: SshFollowInput,
    done: Callable[[], Awaitable[bool]],
) -> None:
    """Run the activity until `done`, then cancel it, as the slot does when it becomes READY."""
    task = asyncio.ensure_future(env.run(activities.follow_logs, input))
    await assert_eventually(done)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_follow_resumes_from_its_last_heartbeat_without_loss_or_repeat(
    tmp_path: Path,
    sshd: Sshd,
    temporal: WorkflowEnvironment,
    activities: SshLogActivities,
    slot: WorkflowHandle[Any, Any],
) -> None:
    log = tmp_path / "provisioning.log"
    expected = [f"step {i}" for i in range(10)]
    append(log, *expected[:5])
    input = follow_input(sshd, slot.id, log)

    first: list[Any] = []

    async def five() -> bool:
        return len(raw_lines(await batches(slot))) >= 5

    await follow_until_cancelled(activity_env(temporal.client, first), activities, input, five)

    append(log, *expected[5:])
    with log.open("a") as out:
        out.write("step 10 not finished")
    second: list[Any] = []

    async def ten() -> bool:
        return len(raw_lines(await batches(slot))) >= 10

    env = activity_env(temporal.client, second, resume_from=first[-1])
    await follow_until_cancelled(env, activities, input, ten)

    async def disconnected() -> bool:  # cancellation closed the connection
        return not sshd.session_pids()

    await assert_eventually(disconnected, timeout=3)
    await asyncio.sleep(0.2)  # a repeat would show up here

    received = await batches(slot)
    assert raw_lines(received) == expected
    assert {batch.instance_id for batch in received} == {42}
    assert second[-1]["lines_seen"] == 10
    assert second[-1]["cursor"]["offsets"][str(log)] == len("".join(f"{e}\n" for e in expected))


async def test_a_first_attempt_starts_where_the_slot_already_holds_lines(
    tmp_path: Path,
    sshd: Sshd,
    temporal: WorkflowEnvironment,
    activities: SshLogActivities,
    slot: WorkflowHandle[Any, Any],
) -> None:
    """After the slot continues as new, a fresh collector must not re-send what it holds."""
    log = tmp_path / "provisioning.log"
    append(log, "held 1", "held 2", "new 1")
    held = LogCursor(offsets={str(log): len("held 1\nheld 2\n")}, epochs={str(log): 0})
    input = follow_input(sshd, slot.id, log, resume_from=held)

    async def one() -> bool:
        return len(raw_lines(await batches(slot))) >= 1

    await follow_until_cancelled(activity_env(temporal.client, []), activities, input, one)
    await asyncio.sleep(0.2)  # a re-send of the held lines would show up here
    assert raw_lines(await batches(slot)) == ["new 1"]


async def test_a_resume_from_a_stale_heartbeat_resends_but_the_slot_keeps_each_line_once(
    tmp_path: Path,
    sshd: Sshd,
    temporal: WorkflowEnvironment,
    activities: SshLogActivities,
    slot: WorkflowHandle[Any, Any],
) -> None:
    """The SDK throttles heartbeats, so a crashed attempt's recorded cursor can lag its signals."""
    log, other = tmp_path / "provisioning.log", tmp_path / "comfyui.log"
    append(log, "a1", "a2", "a3")
    append(other, "b1")
    input = follow_input(sshd, slot.id, log, other)
    beats: list[Any] = []

    async def four() -> bool:
        return len(raw_lines(await batches(slot))) >= 4

    await follow_until_cancelled(activity_env(temporal.client, beats), activities, input, four)
    stale = next(beat for beat in beats if beat["lines_seen"] == 2)  # after a1, a2 only

    append(log, "a4")
    append(other, "b2")

    async def all_kept() -> bool:
        return len(kept_lines(await batches(slot))) >= 6

    env = activity_env(temporal.client, [], resume_from=stale)
    await follow_until_cancelled(env, activities, input, all_kept)

    received = await batches(slot)
    assert raw_lines(received).count("a3") == 2  # really re-sent
    assert kept_lines(received) == ["a1", "a2", "a3", "b1", "a4", "b2"]


async def test_a_fatal_line_returns_at_once_after_signalling_the_lines_up_to_it(
    tmp_path: Path,
    sshd: Sshd,
    temporal: WorkflowEnvironment,
    activities: SshLogActivities,
    slot: WorkflowHandle[Any, Any],
) -> None:
    log = tmp_path / "comfyui.log"
    append(
        log, "loading token=hf_secret42", "RuntimeError: CUDA error: device-side assert", "later"
    )
    heartbeats: list[Any] = []
    env = activity_env(temporal.client, heartbeats)

    started = time.monotonic()
    result = await asyncio.wait_for(
        env.run(activities.follow_logs, follow_input(sshd, slot.id, log, batch_lines=50)), 5
    )

    assert time.monotonic() - started < 2
    assert result == SshFollowResult(
        fatal_line="RuntimeError: CUDA error: device-side assert", path=str(log), lines_seen=2
    )
    assert raw_lines(await batches(slot)) == [
        "loading token=***42",
        "RuntimeError: CUDA error: device-side assert",
    ]
    fatal_end = len("loading token=hf_secret42\nRuntimeError: CUDA error: device-side assert\n")
    assert heartbeats[-1]["cursor"]["offsets"][str(log)] == fatal_end


@pytest.mark.parametrize("pem", ["stranger", None])
async def test_a_rejected_or_missing_key_is_a_non_retryable_ssh_auth_error(
    pem: str | None,
    tmp_path: Path,
    sshd: Sshd,
    key: dict[str, str | None],
    activities: SshLogActivities,
) -> None:
    key["pem"] = ed25519_key()[0] if pem == "stranger" else None
    env = activity_env(None, [])
    with pytest.raises(ApplicationError) as raised:
        await env.run(activities.follow_logs, follow_input(sshd, "slot-x", tmp_path / "x.log"))
    assert raised.value.type == "SshAuthError"
    assert raised.value.non_retryable
    assert "PRIVATE KEY" not in str(raised.value)


async def test_an_unreachable_host_raises_a_retryable_connect_error(
    tmp_path: Path, sshd: Sshd, activities: SshLogActivities
) -> None:
    sshd.kill()
    env = activity_env(None, [])
    with pytest.raises(SshConnectError):
        await env.run(activities.follow_logs, follow_input(sshd, "slot-x", tmp_path / "x.log"))


async def test_in_a_worker_the_retry_policy_reconnects_after_sshd_restarts(
    tmp_path: Path, sshd: Sshd, temporal: WorkflowEnvironment, worker: str
) -> None:
    """Real heartbeats through the server, real retries: kill sshd mid-follow, then a fatal line."""
    log = tmp_path / "provisioning.log"
    append(log, "boot 1", "boot 2")
    workflow_id = f"slot-{uuid.uuid4()}"
    follow = follow_input(
        sshd, workflow_id, log, keepalive_interval=timedelta(seconds=0.5), keepalive_max_miss=2
    )
    handle = await temporal.client.start_workflow(
        SshLogRecorder.run, follow, id=workflow_id, task_queue=worker
    )

    async def kept(count: int) -> bool:
        return len(kept_lines(await batches(handle))) >= count

    await assert_eventually(lambda: kept(2))
    sshd.kill()
    append(log, "while down 1", "while down 2")
    await asyncio.sleep(0.3)
    sshd.start()
    append(log, "after restart")
    await assert_eventually(lambda: kept(5))
    append(log, "OSError: [Errno 28] No space left on device", "never sent")

    result = await asyncio.wait_for(handle.result(), 10)
    assert result is not None
    assert result.fatal_line == "OSError: [Errno 28] No space left on device"
    assert result.lines_seen == 6
    assert kept_lines(await batches(handle)) == [
        "boot 1",
        "boot 2",
        "while down 1",
        "while down 2",
        "after restart",
        "OSError: [Errno 28] No space left on device",
    ]
    retried = [
        event.activity_task_started_event_attributes
        for event in (await handle.fetch_history()).events
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert retried[-1].attempt > 1
    assert retried[-1].last_failure.application_failure_info.type == "SshConnectError"
