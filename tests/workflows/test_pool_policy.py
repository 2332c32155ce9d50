"""The pool's capacity policy and the studio's environment on the dev server, with real slots
and a scripted provider underneath (`test_pool.py` has the lease rules; a module of its own so
that the two run on different test workers)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.testing import WorkflowEnvironment

from tests.workflows.fakes import FakeCloud
from tests.workflows.test_pool import (
    fast,
    idle,
    pool_env,
    req,
    running_pool,
    upd,
    wait_pool,
)
from warmpool.environment import Environment, ModelSpec
from warmpool.models import PoolStatus, ResizeRequest, ScalingPolicy, SlotState
from workflows.pool import WarmPoolWorkflow

S = SlotState
__all__ = ["pool_env"]  # the dev server fixture, shared by name


# ---- capacity follows demand (the scaling policy and the stopped tier) ---------------------


def policy(**kw: Any) -> ScalingPolicy:
    return ScalingPolicy(**kw)


async def test_lease_and_release_cycles_cause_no_churn(pool_env: WorkflowEnvironment) -> None:
    """The issue's churn: each lease used to rent a replacement and each release retire a
    slot. With a buffer above use and a delay before shrinking, 20 cycles rent nothing new
    and no lease is refused while a released slot is only being cleaned."""
    cloud = FakeCloud(machines=8)
    async with running_pool(pool_env, cloud, fast(min_ready=2, max_slots=4)) as pool:
        await wait_pool(pool_env, pool, idle(2))
        started = (await pool.query(WarmPoolWorkflow.status)).stats.provisions_started
        for cycle in range(20):
            grant = await upd(pool, WarmPoolWorkflow.lease, req(f"c{cycle}"))
            await upd(pool, WarmPoolWorkflow.release, grant.lease_id)
        status = await pool.query(WarmPoolWorkflow.status)
        assert status.stats.provisions_started - started <= 2
        assert status.costs is not None and status.costs.refusals == 0
        assert not any(v.retiring for v in status.slots), "nothing retired within the delay"


async def test_waiting_requests_grow_the_pool_at_once(pool_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(machines=8)
    config = fast(min_ready=0, max_slots=4, scaling=policy(buffer=0))
    async with running_pool(pool_env, cloud, config) as pool:
        status = await pool.query(WarmPoolWorkflow.status)
        assert status.slots == [], "scale to zero: floor 0, buffer 0"
        for i in range(3):
            waiting = req(f"w{i}", rid=f"wait-{i}").model_copy(
                update={"wait_for": timedelta(minutes=5)}
            )
            await pool.signal(WarmPoolWorkflow.request_lease, waiting)
        status = await wait_pool(pool_env, pool, lambda s: len(s.active_leases) == 3)
        assert len(status.slots) == 3 and cloud.calls["create"] == 3, "one rental per request"
        assert status.scaling is not None
        assert any("waiting" in d.reason for d in status.scaling.decisions)
        assert status.costs is not None and status.costs.lease_wait_p95_s is not None
        assert status.costs.lease_wait_p95_s > 0, "they waited for their rentals"


async def test_surplus_shrinks_after_the_delay_one_at_a_time_never_a_leased_slot(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=8)
    delay = timedelta(seconds=2)
    config = fast(min_ready=3, max_slots=4, scaling=policy(buffer=0, scale_down_delay=delay))
    async with running_pool(pool_env, cloud, config) as pool:
        await wait_pool(pool_env, pool, idle(3))
        grants = [await upd(pool, WarmPoolWorkflow.lease, req(f"u{i}")) for i in range(3)]
        await upd(pool, WarmPoolWorkflow.resize, ResizeRequest(min_ready=1))
        for grant in grants[1:]:
            await upd(pool, WarmPoolWorkflow.release, grant.lease_id)
        released_at = asyncio.get_running_loop().time()
        # one leased + buffer 0, floor 1: a target of 1, so two slots are surplus
        status = await wait_pool(pool_env, pool, lambda s: len(s.slots) == 1, attempts=400)
        assert asyncio.get_running_loop().time() - released_at >= delay.total_seconds()
        assert [v.lease_id for v in status.slots] == [grants[0].lease_id]
        assert status.scaling is not None
        retired = [d for d in status.scaling.decisions if "retired after" in d.reason]
        assert len(retired) == 2
        assert retired[1].at - retired[0].at >= timedelta(0), "one after the other"


async def test_a_parked_slot_resumes_before_anything_new_is_rented(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=8)
    config = fast(
        min_ready=2,
        max_slots=3,
        scaling=policy(
            buffer=0,
            stopped_target=1,
            park_after=timedelta(seconds=0.5),
            scale_down_delay=timedelta(minutes=10),
        ),
    )
    async with running_pool(pool_env, cloud, config) as pool:
        await wait_pool(pool_env, pool, idle(2))
        await upd(pool, WarmPoolWorkflow.lease, req("a"))
        before = {
            v.index: v.connection_url for v in (await pool.query(WarmPoolWorkflow.status)).slots
        }
        await upd(pool, WarmPoolWorkflow.resize, ResizeRequest(min_ready=1))  # 1 surplus
        status = await wait_pool(pool_env, pool, lambda s: s.counts.get("STOPPED") == 1)
        assert cloud.calls["vast.stop"] == 1 and cloud.calls["vast.destroy"] == 0
        assert status.costs is not None and status.costs.spend_per_hour_by_tier["idle"] == 0
        rented = cloud.calls["create"]
        parked = next(v for v in status.slots if v.state == S.STOPPED)
        waiting = req("b", rid="wait-b").model_copy(update={"wait_for": timedelta(minutes=5)})
        await pool.signal(WarmPoolWorkflow.request_lease, waiting)
        status = await wait_pool(pool_env, pool, lambda s: len(s.active_leases) == 2)
        assert cloud.calls["vast.start"] == 1
        assert cloud.calls["create"] == rented, "the parked slot served, nothing new rented"
        resumed = next(v for v in status.slots if v.index == parked.index)
        assert resumed.state == S.LEASED
        assert parked.connection_url is None, "a stopped instance has no ports"
        assert resumed.connection_url != before[parked.index], "a resume maps new ports"


async def test_a_resume_whose_gpu_was_taken_destroys_it_and_rents_fresh(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=8, scenarios=dict.fromkeys(range(1, 9), "gpu_taken"))
    config = fast(
        min_ready=0,
        max_slots=2,
        scaling=policy(buffer=1, stopped_target=1, park_after=timedelta(seconds=0.3)),
    )
    config.slot.resume_timeout = timedelta(seconds=1)
    async with running_pool(pool_env, cloud, config) as pool:
        await wait_pool(pool_env, pool, idle(1))
        grant = await upd(pool, WarmPoolWorkflow.lease, req("a"))
        await wait_pool(pool_env, pool, idle(1))
        await upd(pool, WarmPoolWorkflow.release, grant.lease_id)
        await wait_pool(pool_env, pool, lambda s: s.counts.get("STOPPED") == 1)
        stopped = [i for i in cloud.live() if i.stopped]
        assert len(stopped) == 1
        await upd(pool, WarmPoolWorkflow.lease, req("b"))  # buffer 1: the parked one resumes
        status = await wait_pool(
            pool_env, pool, lambda s: s.idle_ready == 1 and "STOPPED" not in s.counts
        )
        assert cloud.calls["vast.start"] >= 1
        assert stopped[0].destroyed, "the stopped instance is destroyed, not forgotten"
        assert status.stats.failures_by_reason.get("resume_failed") == 1
        assert status.excluded_machines == [], "a taken GPU is not the machine's fault"


# ---- the studio's environment: READY only when present, rolled out without losing capacity ----


def environment(*files: str) -> Environment:
    return Environment(
        models=[
            ModelSpec(url=f"https://huggingface.co/s/{f}", folder="checkpoints", file=f)
            for f in files
        ]
    )


async def test_a_rollout_keeps_min_ready_idle_and_replaces_a_leased_slot_after_release(
    pool_env: WorkflowEnvironment,
) -> None:
    cloud = FakeCloud(machines=12)
    v1, v2 = environment("a.safetensors"), environment("a.safetensors", "b.safetensors")
    config = fast(min_ready=3, max_slots=4, scaling=policy(buffer=3), environment=v1)
    config.slot.environment_poll = timedelta(seconds=0.1)
    async with running_pool(pool_env, cloud, config) as pool:
        await wait_pool(pool_env, pool, idle(3))
        assert cloud.calls["comfy.check_environment"] >= 6, "READY only after the checks"
        leased = await upd(pool, WarmPoolWorkflow.lease, req("keeper"))
        status = await wait_pool(pool_env, pool, lambda s: s.idle_ready == 3)
        assert status.slots_by_environment == {v1.version: 4}
        await upd(pool, WarmPoolWorkflow.set_environment, v2)
        fewest_idle = 3

        def rolled(s: PoolStatus) -> bool:
            nonlocal fewest_idle
            fewest_idle = min(fewest_idle, s.idle_ready)
            serving = [v for v in s.slots if v.state in (S.READY, S.LEASED) and not v.retiring]
            return (
                len(serving) == 4
                and sum(1 for v in serving if v.env_version == v2.version) == 3
                and not any(v.retiring for v in s.slots)
            )

        status = await wait_pool(pool_env, pool, rolled, attempts=1200)
        assert fewest_idle >= 3, "capacity never dropped below min_ready idle"
        keeper = next(v for v in status.slots if v.lease_id == leased.lease_id)
        assert keeper.env_version == v1.version, "a leased slot is left alone"
        await upd(pool, WarmPoolWorkflow.release, leased.lease_id)
        status = await wait_pool(
            pool_env,
            pool,
            lambda s: s.slots_by_environment == {v2.version: 3} and s.idle_ready == 3,
            attempts=1200,
        )
        assert status.environment_version == v2.version


async def test_a_model_missing_on_every_machine_is_systemic(pool_env: WorkflowEnvironment) -> None:
    cloud = FakeCloud(machines=6, scenarios=dict.fromkeys(range(1, 7), "model_missing"))
    config = fast(min_ready=1, max_slots=1, safe_mode_after=2, environment=environment("a.x"))
    config.slot.environment_timeout = timedelta(seconds=0.5)
    config.slot.environment_poll = timedelta(seconds=0.1)
    async with running_pool(pool_env, cloud, config) as pool:
        status = await wait_pool(pool_env, pool, lambda s: s.safe_mode)
        assert status.safe_reason is not None
        assert "model checkpoints/a.x missing on 2 distinct machines" in status.safe_reason
        assert len(status.excluded_machines) == 2
        assert status.stats.failures_by_reason == {"environment_incomplete": 2}
