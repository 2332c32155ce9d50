"""OrphanReaperWorkflow over real sockets: dev server, worker, real activities, the simulator.

Orphans are made the ways they happen: a slot workflow terminated while it held an instance,
and an instance rented straight through the Vast.ai client with the pool's label prefix and no
slot behind it. The provider's start date of an "old" instance is moved back an hour in the
in-process simulator, so the grace period is tested without waiting for it.

`python -m tests.workflows.test_reaper` re-records `tests/histories/orphan_reaper.json`, which
tests/workflows/test_replay.py replays against today's workflow code.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    WorkflowHandle,
    WorkflowHistory,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.reaper import read_claim
from tests.conftest import start_dev_server
from tests.helpers import in_state, new_queue, wait_status
from tests.integration import conftest as integration
from tests.integration.conftest import FAST, FAST_SIM, Stack, sim_secrets, start_stack
from tests.integration.test_tokens import run_cli
from vastsim import Simulator
from warmpool.cli.reaper import ensure_schedule, schedule_id
from warmpool.labels import slot_workflow_id
from warmpool.models import SlotInput, SlotState, SlotStatus
from warmpool.reaper import ReaperInput, ReaperReport, Verdict
from warmpool.settings import Settings
from warmpool.vast import CreateRequest
from workflows.reaper import OrphanReaperWorkflow

stack_factory = integration.stack_factory
HISTORY = Path(__file__).resolve().parent.parent / "histories" / "orphan_reaper.json"
S = SlotState
Make = Callable[..., Any]
HOUR = 3600.0


def new_pool() -> str:
    return f"rp-{uuid.uuid4().hex[:8]}"


async def start_slot(stack: Stack, pool: str, index: int) -> WorkflowHandle[Any, SlotStatus]:
    return await stack.client.start_workflow(
        "WarmSlotWorkflow",
        SlotInput(pool=pool, index=index, config=stack.settings.slot_config()),
        id=slot_workflow_id(pool, index),
        task_queue=stack.queue,
        result_type=SlotStatus,
    )


async def rent_directly(stack: Stack, label: str, *, age_s: float = 0.0) -> int:
    """An instance with this label that no workflow knows about, started `age_s` ago."""
    taken = {i.offer_id for i in stack.sim.live_instances()}
    offer = next(o for o in stack.sim.offers() if o["id"] not in taken and o["rentable"])
    request = CreateRequest(image="vastai/comfyui:latest", disk=250, label=label)
    instance_id = await stack.activities.client.create_instance(int(str(offer["id"])), request)
    stack.sim.cloud.instance(instance_id).created_epoch -= age_s
    return instance_id


def live_ids(stack: Stack) -> set[int]:
    return {i.id for i in stack.sim.live_instances()}


async def reap(stack: Stack, pool: str, **kw: Any) -> ReaperReport:
    return await stack.client.execute_workflow(
        OrphanReaperWorkflow.run,
        ReaperInput(pool=pool, **kw),
        id=f"reaper-test-{uuid.uuid4().hex[:8]}",
        task_queue=stack.queue,
    )


async def cleanup(stack: Stack, *handles: WorkflowHandle[Any, SlotStatus]) -> None:
    for handle in handles:
        await handle.signal("retire", "test over")
    for handle in handles:
        assert (await handle.result()).state == S.DONE
    for instance_id in live_ids(stack):
        await stack.activities.client.destroy_instance(instance_id)
    integration.assert_no_orphans(stack.sim)


@pytest.mark.integration
async def test_reaper_destroys_old_orphans_and_keeps_owned_young_and_foreign(
    stack_factory: Make,
) -> None:
    stack: Stack = await stack_factory()
    pool = new_pool()
    keeper, doomed = await start_slot(stack, pool, 0), await start_slot(stack, pool, 1)
    kept = await wait_status(stack.env, keeper, in_state(S.READY), attempts=1500)
    lost = await wait_status(stack.env, doomed, in_state(S.READY), attempts=1500)
    assert kept.instance is not None and lost.instance is not None
    # Slot 1 is terminated by hand while it holds its instance: that instance is an orphan.
    await doomed.terminate("operator terminated the slot")
    stack.sim.cloud.instance(lost.instance.id).created_epoch -= HOUR
    stack.sim.cloud.instance(kept.instance.id).created_epoch -= HOUR
    stray = await rent_directly(stack, f"wp.{pool}.7.1", age_s=HOUR)
    young = await rent_directly(stack, f"wp.{pool}.8.1")
    foreign = await rent_directly(stack, f"wp.x{pool}.0.1", age_s=HOUR)

    dry = await reap(stack, pool, dry_run=True)
    assert {d.candidate.instance_id for d in dry.orphans} == {lost.instance.id, stray}
    assert dry.destroyed == [] and {lost.instance.id, stray} <= live_ids(stack)

    report = await reap(stack, pool)
    verdicts = {d.candidate.instance_id: d.verdict for d in report.decisions}
    assert verdicts == {
        kept.instance.id: Verdict.OWNED,
        lost.instance.id: Verdict.ORPHAN,
        stray: Verdict.ORPHAN,
        young: Verdict.IN_GRACE,
    }
    assert {r.instance_id for r in report.destroyed} == {lost.instance.id, stray}
    assert report.failed == []
    dph = {i.id: i for i in stack.sim.instances()}
    expected = sum(
        stack.sim.cloud.instance(i).offer["dph_total"] for i in (lost.instance.id, stray)
    )
    assert report.saved_per_hour == pytest.approx(expected, abs=1e-4)
    assert dph[lost.instance.id].destroyed and dph[stray].destroyed
    assert {kept.instance.id, young, foreign} <= live_ids(stack)
    await cleanup(stack, keeper)


@pytest.mark.integration
async def test_a_stopped_orphan_is_reaped_and_reported_as_billing_its_disk(
    stack_factory: Make,
) -> None:
    """Nothing stopped is forgotten: a stopped instance with the pool's label and no slot
    still bills its disk, so the reaper destroys it like a running one."""
    stack: Stack = await stack_factory()
    pool = new_pool()
    parked = await rent_directly(stack, f"wp.{pool}.2.1", age_s=HOUR)
    await stack.activities.client.stop_instance(parked)
    report = await reap(stack, pool)
    [decision] = report.decisions
    assert decision.verdict == Verdict.ORPHAN and decision.candidate.stopped
    assert decision.candidate.actual_status == "stopped"
    assert [r.instance_id for r in report.destroyed] == [parked]
    storage = stack.sim.cloud.instance(parked).storage_per_hour()
    assert report.saved_per_hour == pytest.approx(storage, abs=1e-4)
    assert storage < stack.sim.cloud.instance(parked).offer["dph_total"]
    assert parked not in live_ids(stack)
    await cleanup(stack)


@pytest.mark.integration
async def test_an_unreadable_or_finished_slot_claims_accordingly(
    dev_env: WorkflowEnvironment,
) -> None:
    """No worker polls this queue: the running slot cannot answer, so its claim is unknown."""
    client: Client = dev_env.client
    pool = new_pool()
    handle = await client.start_workflow(
        "WarmSlotWorkflow",
        SlotInput(pool=pool, index=0),
        id=slot_workflow_id(pool, 0),
        task_queue=new_queue(),
    )
    unread = await read_claim(client, pool, 0, rpc_timeout=timedelta(seconds=1))
    assert unread.live is None and "query failed" in unread.detail
    await handle.terminate("test over")
    assert (await read_claim(client, pool, 0)).live is False
    missing = await read_claim(client, pool, 1)
    assert missing.live is False and missing.detail == "no such workflow"


@pytest.mark.integration
async def test_schedule_is_idempotent_triggers_and_the_cli_runs_the_reaper(
    stack_factory: Make,
) -> None:
    stack: Stack = await stack_factory()
    pool = new_pool()
    settings = stack.settings.model_copy(update={"task_queue": stack.queue})
    orphan = await rent_directly(stack, f"wp.{pool}.3.1", age_s=HOUR)
    assert await ensure_schedule(
        stack.client, settings, pool, timedelta(hours=1), timedelta(minutes=5)
    )
    assert not await ensure_schedule(
        stack.client, settings, pool, timedelta(hours=2), timedelta(minutes=5)
    )
    schedule = stack.client.get_schedule_handle(schedule_id(pool))
    described = await schedule.describe()
    assert [i.every for i in described.schedule.spec.intervals] == [timedelta(hours=2)]

    await schedule.trigger()
    async with asyncio.timeout(30):
        while not (described := await schedule.describe()).info.recent_actions:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    action = described.info.recent_actions[0].action
    assert isinstance(action, ScheduleActionExecutionStartWorkflow)
    report = await stack.client.get_workflow_handle(
        action.workflow_id, result_type=ReaperReport
    ).result()
    assert [r.instance_id for r in report.destroyed] == [orphan]
    assert orphan not in live_ids(stack)

    # The operator's commands, from their own process.
    again = await run_cli(stack, "reaper", "schedule", pool, "--every", "30m", "--json")
    assert again.code == 0 and again.json()["created"] is False, again
    young = await rent_directly(stack, f"wp.{pool}.4.1")
    run = await run_cli(stack, "reaper", "run", pool, "--grace", "1h", "--json")
    assert run.code == 0, run
    cli_report = ReaperReport.model_validate(run.json())
    assert [d.verdict for d in cli_report.decisions] == [Verdict.IN_GRACE]
    assert cli_report.destroyed == [] and young in live_ids(stack)
    human = await run_cli(stack, "reaper", "run", pool, "--grace", "0s")
    assert human.code == 0, human
    assert f"destroyed {young} wp.{pool}.4.1" in human.out
    assert "saves $" in human.out
    await schedule.delete()
    await cleanup(stack)


def test_the_recorded_history_destroys_an_orphan_and_keeps_the_rest() -> None:
    """The replayed history must keep covering the destroy path, not only a quiet run."""
    history = WorkflowHistory.from_json("orphan_reaper", HISTORY.read_text())
    done = history.events[-1].workflow_execution_completed_event_attributes.result.payloads
    [report] = pydantic_data_converter.payload_converter.from_payloads(done, [ReaperReport])
    assert isinstance(report, ReaperReport) and len(report.destroyed) == 1
    verdicts = sorted(d.verdict for d in report.decisions)
    assert verdicts == sorted([Verdict.OWNED, Verdict.ORPHAN, Verdict.IN_GRACE])


async def record_history() -> None:
    """A slot holding its instance, an old orphan and a young one; one reaper run, recorded."""
    env = await start_dev_server()
    async with AsyncExitStack() as exits, Simulator(FAST_SIM) as sim:
        settings = Settings(**FAST)
        stack = await start_stack(
            exits, env, sim, settings, sim_secrets(sim), queue="record-reaper"
        )
        slot = await start_slot(stack, "rec", 0)
        await wait_status(env, slot, in_state(S.READY), attempts=1500)
        await rent_directly(stack, "wp.rec.5.1", age_s=HOUR)
        await rent_directly(stack, "wp.rec.6.1")
        handle = await env.client.start_workflow(
            OrphanReaperWorkflow.run,
            ReaperInput(pool="rec"),
            id="orphan_reaper",
            task_queue="record-reaper",
        )
        await handle.result()
        HISTORY.write_text((await handle.fetch_history()).to_json() + "\n")
        await cleanup(stack, slot)
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record_history())
