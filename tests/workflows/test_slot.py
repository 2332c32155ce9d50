"""WarmSlotWorkflow, one test per path, on the time-skipping server with a scripted provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.helpers import in_state, new_queue, wait_status
from tests.workflows.fakes import FakeCloud, workers
from warmpool.labels import slot_workflow_id
from warmpool.models import (
    Lease,
    LeaseEndRequest,
    PollingConfig,
    ProbeConfig,
    ProvisioningConfig,
    SlotConfig,
    SlotEvent,
    SlotInput,
    SlotState,
    SlotStatus,
    SshConfig,
    SshLogBatch,
)
from warmpool.ssh import LogCursor
from workflows.slot import WarmSlotWorkflow

S = SlotState


@asynccontextmanager
async def running_slot(
    env: WorkflowEnvironment, cloud: FakeCloud, config: SlotConfig | None = None
) -> AsyncIterator[WorkflowHandle[WarmSlotWorkflow, SlotStatus]]:
    queue = new_queue()
    acts = cloud.activities()
    beat: dict[str, Any] = {
        "max_heartbeat_throttle_interval": timedelta(seconds=0.2),
        "default_heartbeat_throttle_interval": timedelta(seconds=0.2),
    }
    async with AsyncExitStack() as stack:
        for worker in workers(env.client, queue, acts, [WarmSlotWorkflow], **beat):
            await stack.enter_async_context(worker)
        handle = await env.client.start_workflow(
            WarmSlotWorkflow.run,
            SlotInput(pool="t", index=0, config=config or SlotConfig()),
            id=slot_workflow_id(f"t-{queue}", 0),
            task_queue=queue,
        )
        yield handle
        await handle.signal(WarmSlotWorkflow.retire, "test over")
        final = await handle.result()
        assert final.state == S.DONE
        assert cloud.live() == [], "an instance outlived its slot"


async def test_happy_path_reaches_ready_with_validated_url(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud()
    async with running_slot(ts_env, cloud) as handle:
        status = await wait_status(ts_env, handle, in_state(S.READY))
        assert status.connection_url == "http://127.0.0.1:40001"
        assert status.instance is not None and status.instance.id in cloud.instances
        assert [t.to_state for t in status.transitions][:8] == [
            S.PREFLIGHT,
            S.SEARCHING,
            S.RENTING,
            S.PROVISIONING,
            S.PROBING,
            S.VALIDATING_PORTS,
            S.READY,
        ][:8][: len(status.transitions)]
        assert status.counters.rents == 1
        assert status.time_to_ready_s is not None and status.time_to_ready_s > 0
    assert cloud.calls["create"] == 1


async def test_no_space_destroys_at_once_and_rents_on_another_machine(
    ts_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(scenarios={1: "no_space"})
    config = SlotConfig(fallback_image="vastai/comfyui:slim")
    async with running_slot(ts_env, cloud, config) as handle:
        status = await wait_status(ts_env, handle, in_state(S.READY))
        first = cloud.instances[min(cloud.instances)]
        assert first.machine_id == 1 and first.destroyed
        assert first.observes == 2, "destroyed on the first observation of the fatal status"
        assert status.instance is not None and status.instance.machine_id != 1
        assert 1 in status.excluded_machines
        assert status.counters.failures_by_reason == {"no_space": 1}
        assert status.image_used == "vastai/comfyui:slim", "fallback image after extraction failure"


async def test_load_failed_past_grace_is_destroyed(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(scenarios={1: "load_failed"})
    config = SlotConfig(
        provisioning=ProvisioningConfig(fatal_grace=timedelta(seconds=120)),
        polling=PollingConfig(active=timedelta(seconds=30)),
    )
    async with running_slot(ts_env, cloud, config) as handle:
        await wait_status(ts_env, handle, in_state(S.READY))
        first = cloud.instances[min(cloud.instances)]
        assert first.destroyed
        # seen bad at observe 2, then polls every 30 s: destroyed once 120 s have passed
        assert first.observes >= 6
        status = await handle.query(WarmSlotWorkflow.status)
        assert status.counters.failures_by_reason == {"load_failed": 1}


async def test_unknown_blip_within_grace_is_tolerated(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(scenarios={1: "unknown_blip"})
    async with running_slot(ts_env, cloud) as handle:
        status = await wait_status(ts_env, handle, in_state(S.READY))
        assert status.instance is not None and status.instance.machine_id == 1
        assert status.counters.failures == 0


async def test_ports_unmapped_then_mapped_ready_only_after_validation(
    ts_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(scenarios={1: "ports_late"})
    async with running_slot(ts_env, cloud) as handle:
        status = await wait_status(ts_env, handle, in_state(S.READY))
        inst = cloud.instances[min(cloud.instances)]
        assert inst.observes == 6, "probing starts only once the port is mapped"
        assert cloud.calls["comfy.validate_ports"] == 1
        assert status.port_report is not None and status.port_report.url is not None


async def test_comfy_never_ready_is_destroyed_at_the_timeout(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(scenarios={1: "never_ready"})
    config = SlotConfig(probe=ProbeConfig(readiness_timeout=timedelta(minutes=5)))
    async with running_slot(ts_env, cloud, config) as handle:
        status = await wait_status(ts_env, handle, in_state(S.READY))
        assert cloud.instances[min(cloud.instances)].destroyed
        assert status.counters.failures_by_reason == {"comfy_never_ready": 1}


async def test_firewall_destroys_and_excludes_the_machine(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(scenarios={1: "firewall"})
    async with running_slot(ts_env, cloud) as handle:
        status = await wait_status(ts_env, handle, in_state(S.READY))
        assert status.counters.failures_by_reason == {"firewall": 1}
        assert 1 in status.excluded_machines
        assert status.instance is not None and status.instance.machine_id == 2


async def test_keepalive_lost_replaces_the_instance(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(scenarios={1: "keepalive_lost"})
    async with running_slot(ts_env, cloud) as handle:
        status = await wait_status(
            ts_env,
            handle,
            lambda s: s.state == S.READY and s.instance is not None and s.instance.machine_id == 2,
        )
        assert status.counters.keepalive_losses == 1
        assert cloud.instances[min(cloud.instances)].destroyed


async def test_provisioning_timeout_destroys(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(scenarios={1: "stuck_loading"})
    config = SlotConfig(provisioning=ProvisioningConfig(timeout=timedelta(minutes=10)))
    async with running_slot(ts_env, cloud, config) as handle:
        status = await wait_status(ts_env, handle, in_state(S.READY))
        assert status.counters.failures_by_reason == {"provision_timeout": 1}


async def test_rate_limit_storm_still_one_instance(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(rate_limited_rents=5)
    async with running_slot(ts_env, cloud) as handle:
        await wait_status(ts_env, handle, in_state(S.READY))
        assert cloud.calls["create"] == 1
        assert len(cloud.instances) == 1


async def test_crash_after_create_adopts_instead_of_renting_twice(
    ts_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(crash_after_create=True)
    async with running_slot(ts_env, cloud) as handle:
        await wait_status(ts_env, handle, in_state(S.READY))
        assert cloud.calls["create"] == 1
        assert cloud.calls["vast.rent"] == 2


async def test_invalid_required_token_blocks_before_any_rent(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(token_ok=False)
    async with running_slot(ts_env, cloud) as handle:
        status = await wait_status(ts_env, handle, in_state(S.BLOCKED))
        assert status.blocked_reason and "vast" in status.blocked_reason
        assert cloud.calls["vast.search_offers"] == 0 and cloud.calls["vast.rent"] == 0


async def test_retire_destroys_the_instance(ts_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud()
    async with running_slot(ts_env, cloud) as handle:
        await wait_status(ts_env, handle, in_state(S.READY))
    assert cloud.calls["vast.destroy"] == 1
    assert all(i.destroyed for i in cloud.instances.values())


@pytest.mark.parametrize("state", [S.PROVISIONING, S.PROBING])
async def test_retire_while_starting_destroys(ts_env: WorkflowEnvironment, state: S) -> None:
    cloud = FakeCloud(scenarios={1: "never_ready" if state == S.PROBING else "stuck_loading"})
    async with running_slot(ts_env, cloud) as handle:
        await wait_status(ts_env, handle, in_state(state), step=timedelta(seconds=1))


def batch(offset: int, *lines: str, instance_id: int = 0) -> SshLogBatch:
    """Consecutive lines of `/log` starting at byte `offset`."""
    offsets = [offset]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    end = offsets[-1] + len(lines[-1]) + 1
    return SshLogBatch(
        instance_id=instance_id,
        path="/log",
        epoch=0,
        offset=offset,
        end=end,
        line_offsets=offsets,
        lines=list(lines),
    )


async def test_ssh_log_lines_are_kept_once_and_a_fatal_line_replaces_the_instance(
    ts_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(
        scenarios={1: "stuck_loading"},
        ssh_logs={
            1: [
                batch(0, "l1", "l2"),
                batch(3, "l2", "l3"),  # re-sent by a retried attempt: overlaps the first
                batch(0, "ghost", instance_id=999),  # late, about an instance not held
                batch(9, "CUDA error: boom"),
            ],
            2: [batch(0, "ok")],
        },
        ssh_fatal={1: "CUDA error: boom"},
    )
    # A running collector stops the test server skipping time: poll fast in real time.
    config = SlotConfig(
        ssh=SshConfig(logs=True, heartbeat_timeout=timedelta(hours=1)),
        polling=PollingConfig(active=timedelta(milliseconds=200)),
        provisioning=ProvisioningConfig(timeout=timedelta(hours=1)),
    )
    async with running_slot(ts_env, cloud, config) as handle:
        status = await wait_status(
            ts_env,
            handle,
            lambda s: s.state == S.READY and "ok" in s.log_tail,
            step=timedelta(seconds=1),
        )
        first, second = sorted(cloud.instances)
        assert cloud.instances[first].destroyed and not cloud.instances[second].destroyed
        assert status.log_tail == [
            f"--- instance {first} ---",
            "l1",
            "l2",
            "l3",
            "CUDA error: boom",
            f"--- instance {second} ---",
            "ok",
        ]
        assert status.log_lines_total == 7
        assert status.counters.failures_by_reason == {"fatal_log": 1}
        assert status.last_failure == "fatal_log: /log: CUDA error: boom"
        assert 1 in status.excluded_machines
        assert [i.instance_id for i in cloud.ssh_inputs] == [first, second]
        assert cloud.ssh_inputs[1].resume_from == LogCursor(), "a new rental's logs start at 0"
        for _ in range(200):  # the READY slot cancels the second collector
            if cloud.calls["ssh.cancelled"]:
                break
            await asyncio.sleep(0.05)
        assert cloud.calls["ssh.cancelled"] == 1


async def test_assign_lease_answers_with_the_slot_state_or_a_refusal(
    ts_env: WorkflowEnvironment,
) -> None:
    """The pool reads a refused lease from the answer: no slot event comes back for it."""
    cloud = FakeCloud()
    async with running_slot(ts_env, cloud) as handle:
        ready = await wait_status(ts_env, handle, in_state(S.READY))
        assert ready.state_since is not None
        now = ready.state_since  # the slot's clock (time-skipping), not the test's

        def lease(lease_id: str) -> Lease:
            return Lease(
                lease_id=lease_id,
                holder="ann",
                request_id=lease_id,
                granted_at=now,
                leased_until=now + timedelta(days=1),
            )

        async def assign(lease_id: str) -> SlotEvent:
            return await handle.execute_update(WarmSlotWorkflow.assign_lease, lease(lease_id))

        granted = await assign("l1")
        assert (granted.state, granted.lease_id) == (S.LEASED, "l1")
        again = await assign("l1")
        assert (again.state, again.lease_id) == (S.LEASED, "l1"), "a renewal or a repeat"
        refused = await assign("l2")
        assert refused.state == S.LEASED and refused.lease_id == "l2"
        assert refused.reason == "lease refused: slot is LEASED"
        ended = await handle.execute_update(
            WarmSlotWorkflow.end_lease, LeaseEndRequest(lease_id="l1", reason="released")
        )
        assert ended.state == S.READY and ended.lease_id is None
        late = await assign("l1")
        assert late.state == S.READY and late.lease_id is None and "has ended" in late.reason
        status = await handle.query(WarmSlotWorkflow.status)
        assert status.state == S.READY and status.lease is None
        assert status.counters.leases == 1 and cloud.calls["comfy.clean"] == 1


async def test_a_lease_whose_end_never_comes_is_ended_by_the_slot_once_overdue(
    ts_env: WorkflowEnvironment,
) -> None:
    """Whatever loses the pool's `end_lease`, the instance is not leased to nobody for ever."""
    cloud = FakeCloud()
    config = SlotConfig(lease_overdue_grace=timedelta(seconds=0.5))
    async with running_slot(ts_env, cloud, config) as handle:
        await wait_status(ts_env, handle, in_state(S.READY))
        ready = await handle.query(WarmSlotWorkflow.status)
        assert ready.state_since is not None  # the slot's clock (time-skipping)
        lease = Lease(
            lease_id="l1",
            holder="ann",
            request_id="r1",
            granted_at=ready.state_since,
            leased_until=ready.state_since,
        )
        leased = await handle.execute_update(WarmSlotWorkflow.assign_lease, lease)
        assert leased.state == S.LEASED
        status = await wait_status(
            ts_env, handle, lambda s: s.state == S.READY and s.last_lease_end is not None
        )
        assert status.lease is None and status.last_lease_end is not None
        assert status.last_lease_end.reason.startswith("overdue")
        assert cloud.calls["comfy.clean"] == 1, "cleaned before anyone else is served"
