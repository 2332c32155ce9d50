"""WarmPoolWorkflow rules on the dev server, with real slots and a scripted provider underneath.

The dev server (not time-skipping): READY slots always run a watch activity, which stops the
time-skipping server from skipping, and the dev server's tiny continue-as-new threshold makes
pools and slots continue-as-new during these tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.conftest import EARLY_CONTINUE_AS_NEW, start_dev_server
from tests.helpers import assert_eventually, new_queue
from tests.workflows.fakes import FakeCloud, workers
from warmpool.clients.pool import retry_transient
from warmpool.labels import pool_workflow_id
from warmpool.models import (
    FailureReason,
    LeaseRequest,
    PollingConfig,
    PoolConfig,
    PoolInput,
    PoolStatus,
    ProbeConfig,
    ProvisioningConfig,
    RenewRequest,
    ResizeRequest,
    ScalingPolicy,
    SlotConfig,
    SlotEvent,
    SlotState,
)
from workflows import WORKFLOWS
from workflows.pool import WarmPoolWorkflow

S = SlotState
Pool = WorkflowHandle[WarmPoolWorkflow, PoolStatus]


@pytest.fixture(scope="module")
async def pool_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server of this module's own (no workflows left running by other suites), with
    the same tiny continue-as-new threshold so pools and slots continue-as-new here too."""
    env = await start_dev_server(*EARLY_CONTINUE_AS_NEW)
    yield env
    await env.shutdown()


@asynccontextmanager
async def running_pool(
    env: WorkflowEnvironment,
    cloud: FakeCloud,
    config: PoolConfig,
    heartbeat_throttle: timedelta = timedelta(seconds=0.2),
) -> AsyncIterator[Pool]:
    queue = new_queue()
    acts = cloud.activities()
    beat: dict[str, Any] = {
        "max_heartbeat_throttle_interval": heartbeat_throttle,
        "default_heartbeat_throttle_interval": heartbeat_throttle,
    }
    name = f"p{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        for worker in workers(env.client, queue, acts, WORKFLOWS, **beat):
            await stack.enter_async_context(worker)
        handle = await env.client.start_workflow(
            WarmPoolWorkflow.run,
            PoolInput(pool=name, config=config),
            id=pool_workflow_id(name),
            task_queue=queue,
        )
        yield handle
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            assert cloud.live() == [], "an instance outlived its pool"
            return
        await handle.signal(WarmPoolWorkflow.drain)
        for lease in (await handle.query(WarmPoolWorkflow.status)).active_leases:
            await upd(handle, WarmPoolWorkflow.release, lease.lease_id)
        try:
            final = await asyncio.wait_for(handle.result(), 60)
        except TimeoutError:
            status = await handle.query(WarmPoolWorkflow.status)
            raise AssertionError(f"pool did not drain: {status.slots}") from None
        assert final.slots == []
        assert cloud.live() == [], "an instance outlived its pool"


async def wait_pool(
    env: WorkflowEnvironment,
    handle: Pool,
    predicate: Callable[[PoolStatus], bool],
    attempts: int = 600,
) -> PoolStatus:
    return await assert_eventually(
        lambda: handle.query(WarmPoolWorkflow.status),
        predicate,
        timeout=attempts * 0.05,
        describe="pool condition",
    )


def fast(**kw: object) -> PoolConfig:
    """Real-time tests on the dev server: every interval of the scripted provider is short."""
    slot = SlotConfig(
        polling=PollingConfig(active=timedelta(seconds=0.05), idle=timedelta(seconds=0.2)),
        retry_backoff_initial=timedelta(seconds=0.05),
        retry_backoff_max=timedelta(seconds=0.2),
        provisioning=ProvisioningConfig(fatal_grace=timedelta(seconds=0.2)),
        probe=ProbeConfig(readiness_initial_interval=timedelta(seconds=0.05)),
    )
    return PoolConfig(slot=slot).model_copy(update=kw)


async def upd(handle: Pool, update: Any, arg: Any) -> Any:
    """An update, retrying what is transient (e.g. racing the pool's continue-as-new)."""
    return await retry_transient(lambda: handle.execute_update(update, arg))


async def accepted_update_args(env: WorkflowEnvironment, pool: Pool) -> str:
    """The arguments of every update the pool accepted, over all its runs, as one text."""
    args: list[str] = []
    async for run in env.client.list_workflows(f"WorkflowId = '{pool.id}'"):
        history = env.client.get_workflow_handle(pool.id, run_id=run.run_id)
        async for event in history.fetch_history_events():
            if event.HasField("workflow_execution_update_accepted_event_attributes"):
                request = event.workflow_execution_update_accepted_event_attributes
                args += [p.data.decode() for p in request.accepted_request.input.args.payloads]
    return "\n".join(args)


def idle(n: int) -> Callable[[PoolStatus], bool]:
    return lambda s: s.idle_ready >= n


def req(holder: str = "alice", minutes: float = 30, rid: str | None = None) -> LeaseRequest:
    return LeaseRequest(
        holder=holder, duration=timedelta(minutes=minutes), request_id=rid or uuid.uuid4().hex
    )


async def test_pool_keeps_its_buffer_idle_above_use_and_leases_idempotently(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=8)
    config = fast(min_ready=2, max_slots=4, scaling=ScalingPolicy(buffer=2))
    async with running_pool(pool_env, cloud, config) as pool:
        await wait_pool(pool_env, pool, idle(2))
        request = req()
        grant = await upd(pool, WarmPoolWorkflow.lease, request)
        again = await upd(pool, WarmPoolWorkflow.lease, request)
        assert again == grant, "the same request id returns the same lease"
        assert grant.connection_url.startswith("http://127.0.0.1:")
        # one leased + a buffer of two: the pool rents a third slot to keep two idle
        status = await wait_pool(
            pool_env, pool, lambda s: s.idle_ready == 2 and s.counts.get("LEASED") == 1
        )
        assert len(status.slots) == 3 and len(status.active_leases) == 1
        released = await upd(pool, WarmPoolWorkflow.release, grant.lease_id)
        assert released.end_reason == "released"
        assert (await upd(pool, WarmPoolWorkflow.release, grant.lease_id)).ended_at
        await wait_pool(pool_env, pool, lambda s: "LEASED" not in s.counts)
        assert cloud.calls["comfy.clean"] == 1, "a released slot is cleaned before reuse"


async def test_no_capacity_is_a_clear_error_counted_as_demand_and_never_two_leases(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=4)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=1)) as pool:
        await wait_pool(pool_env, pool, idle(1))
        granted, refused = req("a"), req("b")
        await upd(pool, WarmPoolWorkflow.lease, granted)
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await upd(pool, WarmPoolWorkflow.lease, refused)
        assert isinstance(err.value.cause, ApplicationError)
        assert err.value.cause.type == "NoCapacity"
        status = await pool.query(WarmPoolWorkflow.status)
        assert len(status.active_leases) == 1
        assert status.costs is not None and status.costs.refusals == 1
        assert status.scaling is not None and status.scaling.demand == 2, "leased + refused"
        assert status.scaling.target == 1, "capped by max_slots"
        accepted = await accepted_update_args(pool_env, pool)
        assert granted.request_id in accepted and refused.request_id in accepted


async def test_a_released_slot_is_ready_again_without_waiting_for_its_watch_to_stop(
    pool_env: WorkflowEnvironment,
) -> None:
    """A watch is cancelled at its next heartbeat, which the worker throttles (20 s in
    production); neither the lease nor the clean after it waits for that."""
    cloud = FakeCloud(machines=4)
    config = fast(min_ready=1, max_slots=1)
    throttle = timedelta(seconds=8)
    async with running_pool(pool_env, cloud, config, heartbeat_throttle=throttle) as pool:
        await wait_pool(pool_env, pool, idle(1))
        grant = await upd(pool, WarmPoolWorkflow.lease, req())
        status = await pool.query(WarmPoolWorkflow.status)
        assert [v.state for v in status.slots] == [S.LEASED], "marked LEASED at the grant"
        await upd(pool, WarmPoolWorkflow.release, grant.lease_id)
        await wait_pool(pool_env, pool, idle(1), attempts=80)  # 4 s, half the throttle
        assert cloud.calls["comfy.clean"] == 1


async def test_invalid_lease_requests_are_rejected_before_history(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=2)
    async with running_pool(pool_env, cloud, fast(min_ready=0, max_slots=1)) as pool:
        for bad in (req(minutes=-5), req(minutes=60 * 24)):
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await upd(pool, WarmPoolWorkflow.lease, bad)
            assert "duration" in str(err.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await upd(pool, WarmPoolWorkflow.release, "nope")
        assert "unknown lease" in str(err.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await upd(pool, WarmPoolWorkflow.resize, ResizeRequest(min_ready=5))
        assert "exceeds max_slots" in str(err.value.cause)
        status = await pool.query(WarmPoolWorkflow.status)
        assert status.active_leases == [] and status.config.min_ready == 0


async def test_lease_expires_on_a_durable_timer_and_renew_extends(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=6)
    async with running_pool(pool_env, cloud, fast(min_ready=2, max_slots=3)) as pool:
        await wait_pool(pool_env, pool, idle(2))
        short = await upd(pool, WarmPoolWorkflow.lease, req("a", minutes=0.03))
        long = await upd(pool, WarmPoolWorkflow.lease, req("b", minutes=0.03))
        renewed = await upd(
            pool,
            WarmPoolWorkflow.renew,
            RenewRequest(lease_id=long.lease_id, duration=timedelta(hours=2)),
        )
        assert renewed.leased_until > long.leased_until
        await wait_pool(pool_env, pool, lambda s: len(s.active_leases) == 1)
        info = await pool.query(WarmPoolWorkflow.lease_info, short.lease_id)
        assert info is not None and info.end_reason == "expired"
        still = await pool.query(WarmPoolWorkflow.lease_info, long.lease_id)
        assert still is not None and still.ended_at is None


async def test_keepalive_lost_while_leased_ends_the_lease_with_a_reason(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=6)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=2)) as pool:
        await wait_pool(pool_env, pool, idle(1))
        grant = await upd(pool, WarmPoolWorkflow.lease, req())
        leased = list(cloud.live())
        cloud.kill_on_watch.update(i.id for i in leased)
        await wait_pool(pool_env, pool, lambda s: not s.active_leases)
        # The slot's events can reach the pool out of order (one that meets the pool's
        # continue-as-new is delivered later): the reason and the failure survive either way.
        info = await pool.query(WarmPoolWorkflow.lease_info, grant.lease_id)
        assert info is not None and info.end_reason is not None
        assert "keepalive_lost" in info.end_reason
        await wait_pool(
            pool_env, pool, lambda s: any("keepalive_lost" in f.reason for f in s.failures)
        )


async def test_a_late_slot_event_keeps_its_failure_but_not_its_state(
    pool_env: WorkflowEnvironment,
) -> None:
    """A slot's signal that met the pool's continue-as-new arrives after newer ones."""
    cloud = FakeCloud(machines=4)
    config = fast(min_ready=1, max_slots=1, safe_mode_after=1)
    async with running_pool(pool_env, cloud, config) as pool:
        ready = await wait_pool(pool_env, pool, idle(1))
        view = ready.slots[0]
        late = SlotEvent(
            index=view.index,
            state=S.TERMINATING,
            at=view.since - timedelta(seconds=1),
            reason="probe failed: connection refused",
            failure=FailureReason.COMFY_NEVER_READY,
        )
        rented = late.model_copy(
            update={"state": S.RENTING, "reason": "offer 7 on machine 7", "failure": None}
        )
        await pool.signal(WarmPoolWorkflow.slot_event, rented)
        await pool.signal(WarmPoolWorkflow.slot_event, late)
        status = await wait_pool(pool_env, pool, lambda s: bool(s.failures))
        assert "connection refused" in status.failures[-1].reason
        assert status.stats.failures_by_reason == {FailureReason.COMFY_NEVER_READY.value: 1}
        assert status.stats.provisions_started == ready.stats.provisions_started + 1
        assert status.stats.provisions_ready == ready.stats.provisions_ready
        assert not status.safe_mode, "a late failure does not undo the READY reported after it"
        assert [(s.index, s.state) for s in status.slots] == [(view.index, S.READY)]


async def test_resize_down_never_retires_a_leased_slot(pool_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(machines=8)
    async with running_pool(pool_env, cloud, fast(min_ready=3, max_slots=4)) as pool:
        await wait_pool(pool_env, pool, idle(3))
        grant = await upd(pool, WarmPoolWorkflow.lease, req())
        await upd(pool, WarmPoolWorkflow.resize, ResizeRequest(min_ready=0, max_slots=1))
        status = await wait_pool(pool_env, pool, lambda s: len(s.slots) == 1)
        assert status.slots[0].lease_id == grant.lease_id
        assert status.slots[0].state == S.LEASED


async def test_safe_mode_after_repeated_failures_then_resume(pool_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(machines=6, scenarios=dict.fromkeys(range(1, 7), "no_space"))
    config = fast(min_ready=1, max_slots=2, safe_mode_after=3)
    async with running_pool(pool_env, cloud, config) as pool:
        status = await wait_pool(pool_env, pool, lambda s: s.safe_mode)
        assert status.safe_reason and "no_space on 3 distinct machines" in status.safe_reason
        assert f"image {config.slot.image}" in status.safe_reason
        renting = cloud.calls["create"]
        await asyncio.sleep(1.5)
        assert cloud.calls["create"] <= renting + 1, "safe mode stops renting"
        cloud.scenarios.clear()
        await pool.signal(WarmPoolWorkflow.resume)
        await wait_pool(pool_env, pool, lambda s: not s.safe_mode and s.idle_ready >= 1)


async def test_host_failures_exclude_each_machine_for_the_whole_pool_and_never_trip_safe_mode(
    pool_env: WorkflowEnvironment,
) -> None:
    """A bad market: four machines with four host faults among the cheapest offers."""
    faults = {1: "load_failed", 2: "create_fails", 3: "firewall", 4: "keepalive_lost"}
    cloud = FakeCloud(machines=10, scenarios=dict(faults))
    config = fast(min_ready=3, max_slots=3, safe_mode_after=2)
    async with running_pool(pool_env, cloud, config) as pool:
        status = await wait_pool(pool_env, pool, idle(3))
        await asyncio.sleep(0.5)  # a second rental of a bad machine would show by now
        status = await pool.query(WarmPoolWorkflow.status)
        assert not status.safe_mode, status.safe_reason
        assert {m: cloud.creates_by_machine[m] for m in faults} == dict.fromkeys(faults, 1)
        excluded = {x.machine_id: x.reason for x in status.excluded_machines}
        assert excluded == {
            1: FailureReason.LOAD_FAILED.value,
            2: FailureReason.RENT_FAILED.value,
            3: FailureReason.FIREWALL.value,
            4: FailureReason.KEEPALIVE_LOST.value,
        }
        assert all(x.until - x.at == config.exclude_for for x in status.excluded_machines)
        assert sorted(await pool.query(WarmPoolWorkflow.excluded_machines)) == sorted(faults)


async def test_an_image_failing_on_distinct_machines_is_systemic(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=8, scenarios=dict.fromkeys(range(1, 9), "never_ready"))
    config = fast(min_ready=2, max_slots=2, safe_mode_after=3)
    config.slot.probe.readiness_timeout = timedelta(seconds=0.3)
    async with running_pool(pool_env, cloud, config) as pool:
        status = await wait_pool(pool_env, pool, lambda s: s.safe_mode)
        assert status.safe_reason is not None
        assert f"image {config.slot.image}" in status.safe_reason
        assert "comfy_never_ready on 3 distinct machines" in status.safe_reason
        assert len(cloud.creates_by_machine) == 3 or len(cloud.creates_by_machine) == 4
        assert max(cloud.creates_by_machine.values()) == 1, "no machine rented twice"


async def test_a_rejected_provider_key_is_systemic_at_once(pool_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(key_rejected=True)
    config = fast(min_ready=1, max_slots=1)
    config.slot.require_tokens = []
    async with running_pool(pool_env, cloud, config) as pool:
        status = await wait_pool(pool_env, pool, lambda s: s.safe_mode)
        assert status.safe_reason is not None
        assert status.safe_reason.startswith(FailureReason.PROVIDER_KEY_REJECTED.value)
        assert cloud.calls["create"] == 0


async def test_a_provider_api_outage_while_provisioning_destroys_nothing(
    pool_env: WorkflowEnvironment,
) -> None:
    """An API error says nothing about the instance: the slot waits and asks again."""
    cloud = FakeCloud(machines=4, observe_failures=9)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=1)) as pool:
        status = await wait_pool(pool_env, pool, idle(1), attempts=1200)
        assert cloud.observe_failures == 0, "the outage was seen while provisioning"
        assert cloud.calls["create"] == 1 and cloud.calls["vast.destroy"] == 0
        assert status.failures == [] and status.stats.failures_by_reason == {}


async def test_a_grant_whose_caller_gave_up_is_ended_unless_asked_again(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=6)
    config = fast(min_ready=2, max_slots=2, claim_window=timedelta(seconds=0.5))
    async with running_pool(pool_env, cloud, config) as pool:
        await wait_pool(pool_env, pool, idle(2))
        lost = await upd(pool, WarmPoolWorkflow.lease, req("lost", rid="lost-1"))
        kept = await upd(pool, WarmPoolWorkflow.lease, req("kept", rid="kept-1"))
        await pool.signal(WarmPoolWorkflow.lease_unanswered, "lost-1")
        await pool.signal(WarmPoolWorkflow.lease_unanswered, "kept-1")
        again = await upd(pool, WarmPoolWorkflow.lease, req("kept", rid="kept-1"))
        assert again.lease_id == kept.lease_id, "the retry gets the same lease"
        status = await wait_pool(pool_env, pool, lambda s: len(s.active_leases) == 1)
        assert [x.lease_id for x in status.active_leases] == [kept.lease_id]
        info = await pool.query(WarmPoolWorkflow.lease_info, lost.lease_id)
        assert info is not None and info.end_reason is not None
        assert info.end_reason.startswith("unclaimed")
        await wait_pool(pool_env, pool, idle(1))  # cleaned and READY again


async def test_pool_resume_wakes_blocked_slots_once_the_token_is_fixed(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(token_ok=False)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=1)) as pool:
        await wait_pool(pool_env, pool, lambda s: s.counts.get(S.BLOCKED.value) == 1)
        cloud.token_ok = True  # the operator fixed the key; the re-check is 10 min away
        await pool.signal(WarmPoolWorkflow.resume)
        await wait_pool(pool_env, pool, idle(1))


async def test_a_moved_comfyui_port_is_validated_again_and_the_lease_follows_it(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=4)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=2)) as pool:
        await wait_pool(pool_env, pool, idle(1))
        grant = await upd(pool, WarmPoolWorkflow.lease, req())
        (leased,) = [
            i for i in cloud.live() if grant.connection_url.endswith(f":{40000 + i.machine_id}")
        ]
        probes = cloud.calls["comfy.await_ready"]
        cloud.move_on_watch.add(leased.id)
        moved = f"http://127.0.0.1:{50000 + leased.machine_id}"

        async def lease_url() -> str | None:
            info = await pool.query(WarmPoolWorkflow.lease_info, grant.lease_id)
            assert info is not None and info.ended_at is None, "the lease survives the move"
            return info.connection_url

        await assert_eventually(lease_url, lambda url: url == moved, describe="lease URL moved")
        assert cloud.calls["comfy.await_ready"] > probes, "the new endpoint was validated"
        assert not leased.destroyed and cloud.calls["vast.destroy"] == 0


async def test_budget_cap_limits_slots(pool_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(machines=8)
    # scripted offers cost $0.31-0.38/h; at a $0.35 cap, $0.70/h buys two slots, not four
    config = fast(min_ready=4, max_slots=4, budget_dph=0.7)
    config.slot.constraints.max_dph = 0.35
    async with running_pool(pool_env, cloud, config) as pool:
        status = await wait_pool(pool_env, pool, lambda s: s.idle_ready >= 2 and s.budget_limited)
        await asyncio.sleep(1)
        status = await pool.query(WarmPoolWorkflow.status)
        assert len(status.slots) == 2
        assert status.spend_per_hour <= 0.7


async def test_waiting_request_is_granted_when_capacity_arrives(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=4)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=2)) as pool:
        waiting = req("w", rid="wait-1").model_copy(update={"wait_for": timedelta(minutes=20)})
        await pool.signal(WarmPoolWorkflow.request_lease, waiting)
        lookup = await pool.query(WarmPoolWorkflow.lease_request, "wait-1")
        assert lookup.status in ("pending", "granted")
        await wait_pool(pool_env, pool, lambda s: len(s.active_leases) == 1)
        lookup = await pool.query(WarmPoolWorkflow.lease_request, "wait-1")
        assert lookup.status == "granted" and lookup.grant is not None


async def test_a_burst_of_40_leases_on_10_ready_slots_grants_exactly_10_distinct(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=30)
    async with running_pool(pool_env, cloud, fast(min_ready=10, max_slots=10)) as pool:
        await wait_pool(pool_env, pool, idle(10))
        outcomes = await asyncio.gather(
            *(upd(pool, WarmPoolWorkflow.lease, req(f"u{i}")) for i in range(40)),
            return_exceptions=True,
        )
        grants = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, WorkflowUpdateFailedError)]
        others = [o for o in outcomes if o not in grants and o not in refused]
        assert others == [], f"neither a grant nor a clear refusal: {others[:3]}"
        assert len(grants) == 10 and len(refused) == 30
        assert len({g.slot_id for g in grants}) == 10, "a slot was leased twice"
        assert len({g.lease_id for g in grants}) == 10
        for err in refused:
            assert isinstance(err.cause, ApplicationError) and err.cause.type == "NoCapacity"
            assert "no capacity" in str(err.cause)
        status = await pool.query(WarmPoolWorkflow.status)
        assert len(status.active_leases) == 10
        assert len({lease.slot for lease in status.active_leases}) == 10


async def test_drain_lets_a_lease_run_until_released_then_retires_the_slot(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=3)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=1)) as pool:
        await wait_pool(pool_env, pool, idle(1))
        grant = await upd(pool, WarmPoolWorkflow.lease, req("keeper"))
        await pool.signal(WarmPoolWorkflow.drain)
        status = await wait_pool(pool_env, pool, lambda s: s.counts.get("DRAINING") == 1)
        assert [lease.lease_id for lease in status.active_leases] == [grant.lease_id], (
            "a draining slot still serves its lease"
        )
        released = await upd(pool, WarmPoolWorkflow.release, grant.lease_id)
        assert released.end_reason == "released"
        final = await asyncio.wait_for(pool.result(), 30)
        assert final.slots == [] and cloud.live() == []


async def test_lease_cycles_survive_the_slot_continuing_as_new_between_release_and_clean(
    pool_env: WorkflowEnvironment,
) -> None:
    """A slot that continues-as-new after a release must still clean and serve again."""
    cloud = FakeCloud(machines=3)
    async with running_pool(pool_env, cloud, fast(min_ready=1, max_slots=1)) as pool:
        status = await wait_pool(pool_env, pool, idle(1))
        slot = pool_env.client.get_workflow_handle(f"{pool.id}/slot-{status.slots[0].index}")
        first_run = (await slot.describe()).run_id
        for cycle in range(12):
            await wait_pool(pool_env, pool, idle(1))
            grant = await upd(pool, WarmPoolWorkflow.lease, req(f"c{cycle}"))
            await upd(pool, WarmPoolWorkflow.release, grant.lease_id)
        await wait_pool(pool_env, pool, idle(1))
        assert (await slot.describe()).run_id != first_run, "the slot never continued-as-new"
        assert cloud.calls["comfy.clean"] == 12, "every release was cleaned before reuse"
