"""Does a slot behave right when Vast.ai behaves like the real one? Slot-level paths of issue 9.

One stack for the module (dev server + a worker with the real activities + the simulator over
HTTP). Every scenario's slot is started at once when the module begins, each with its own image
tag, so that the simulator's faults can be scoped to that slot's rentals by image; each test
then waits for its own slot's outcome (or acts on it), checks it, and retires the slot. At the
end no instance may be left billing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.helpers import assert_eventually, in_state, wait_status
from tests.integration.conftest import (
    FAST,
    FAST_SIM,
    INSTANCE_SECRET,
    Stack,
    assert_no_orphans,
    sim_secrets,
    start_stack,
)
from vastsim import Fault, Simulator
from vastsim.records import CallRecord, InstanceInfo
from warmpool.instance_token import derive_instance_token
from warmpool.models import FailureReason, SlotState, SlotStatus
from warmpool.secrets import FileSecretStore
from warmpool.settings import Settings

pytestmark = pytest.mark.integration
S = SlotState
Handle = WorkflowHandle[Any, SlotStatus]

SIM = FAST_SIM.model_copy(update={"offers": 120})  # a dozen slots renting at once, and again
RUNNING_AFTER_S = SIM.provision_s + SIM.created_s + SIM.loading_s
"""Seconds from a create until the simulator shows the instance running (speed 1)."""
DEV_SERVER_TIMER_S = 1.1
"""The dev server fires a 0.2 s timer after about a second: one provisioning poll period."""

WARMUP_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "warm"}},
}
LONG_GRACE = timedelta(seconds=30)
SHORT_GRACE = timedelta(seconds=1.5)
BLIP_GRACE = timedelta(seconds=2)
CAN_GRACE = timedelta(seconds=6)


def grace(fatal_grace: timedelta) -> dict[str, Any]:
    """A slot config override: the grace a provider failure status gets."""
    return {"provisioning": {"fatal_grace": fatal_grace}}


@dataclass(frozen=True)
class Scenario:
    """One slot: the faults its first rental meets, and its SlotConfig overrides."""

    index: int
    faults: tuple[Fault, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    warmup: bool = False

    @property
    def image(self) -> str:
        return f"vastai/comfyui:fidelity-{self.index}"


SCENARIOS = {
    "warmup": Scenario(1, warmup=True),
    "warmup-fails": Scenario(2, (Fault(kind="prompt_error", count=1),), warmup=True),
    "create-fails": Scenario(3, (Fault(kind="create_fail_with_contract", count=1),)),
    "outbid-provisioning": Scenario(4, (Fault(kind="outbid", seconds=0, count=1),)),
    # outbid 6 s after "running": the slot is READY by then (about 2 s), and its watch sees it
    "outbid-ready": Scenario(5, (Fault(kind="outbid", seconds=6, count=1),)),
    "gone-no_such_instance": Scenario(6),
    "gone-not_found": Scenario(
        7, (Fault(kind="destroy_not_found_variant"), Fault(kind="show_404"))
    ),
    "oci": Scenario(8, (Fault(kind="oci_failed", count=1),), grace(LONG_GRACE)),
    "exited": Scenario(9, (Fault(kind="status", value="exited", count=1),), grace(SHORT_GRACE)),
    "load_failed": Scenario(
        10, (Fault(kind="status", value="load_failed", count=1),), grace(SHORT_GRACE)
    ),
    "blip": Scenario(11, config=grace(BLIP_GRACE)),
    "grace-across-can": Scenario(
        12, (Fault(kind="status", value="exited", count=1),), grace(CAN_GRACE)
    ),
}


@pytest.fixture(scope="module")
async def stack(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The integration conftest's stack (FAST settings) with more offers, built once."""
    async with AsyncExitStack() as exits:
        sim = await exits.enter_async_context(Simulator(SIM))
        settings = Settings(**FAST)
        secrets = sim_secrets(sim, FileSecretStore(tmp_path_factory.mktemp("secrets")))
        yield await start_stack(exits, dev_env, sim, settings, secrets)


@pytest.fixture(scope="module")
async def slots(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Handle]]:
    """Every scenario's slot, started together; afterwards all retired and nothing billing."""
    warmup_file = tmp_path_factory.mktemp("warmup") / "warmup.json"
    warmup_file.write_text(json.dumps(WARMUP_GRAPH))
    handles: dict[str, Handle] = {}
    for name, scenario in SCENARIOS.items():
        for fault in scenario.faults:
            stack.sim.add_fault(fault.model_copy(update={"image": scenario.image}))
        config: dict[str, Any] = {**scenario.config, "image": scenario.image}
        if scenario.warmup:
            config["warmup_workflow"] = str(warmup_file)
        handles[name] = await stack.start_slot(index=scenario.index, **config)
    yield handles
    for handle in handles.values():  # the slots of failed tests
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.signal("retire", "module over")
    await asyncio.gather(*(handle.result() for handle in handles.values()))
    stack.sim.clear_faults()
    assert_no_orphans(stack.sim)


# ---- helpers ----------------------------------------------------------------------------------


async def until(
    stack: Stack, handle: Handle, predicate: Callable[[SlotStatus], bool]
) -> SlotStatus:
    return await wait_status(stack.env, handle, predicate, attempts=1500)


def replaced_once(status: SlotStatus) -> bool:
    """READY again after exactly one failed rental."""
    return status.state == S.READY and status.counters.failures == 1


async def retire(handle: Handle) -> None:
    await handle.signal("retire", "test over")
    final: SlotStatus = await handle.result()
    assert final.state == S.DONE and final.instance is None


def rentals(stack: Stack, name: str) -> list[InstanceInfo]:
    """Every instance a scenario's slot rented, oldest first."""
    image = SCENARIOS[name].image
    return sorted(
        (i for i in stack.sim.instances() if i.image == image), key=lambda i: i.created_at
    )


async def wait_for_rental(stack: Stack, name: str) -> list[InstanceInfo]:
    async def found() -> list[InstanceInfo]:
        return rentals(stack, name)

    return await assert_eventually(found, timeout=30, describe=f"{name}: a rental")


def calls_on(stack: Stack, instance_id: int, method: str) -> list[CallRecord]:
    path = f"/api/v0/instances/{instance_id}/"
    return [c for c in stack.sim.calls if c.method == method and c.path == path]


def reasons_into(status: SlotStatus, state: SlotState) -> list[str]:
    return [t.reason for t in status.transitions if t.to_state == state]


async def comfy_history(url: str, label: str) -> dict[str, Any]:
    token = derive_instance_token(INSTANCE_SECRET.encode(), label)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        response = await http.get(f"{url}/history")
    response.raise_for_status()
    history: dict[str, Any] = response.json()
    return history


# ---- 1. the optional warm-up workflow ---------------------------------------------------------


async def test_warmup_runs_once_before_ready_and_its_duration_is_in_status(
    stack: Stack, slots: dict[str, Handle]
) -> None:
    handle = slots["warmup"]
    status = await until(stack, handle, in_state(S.READY))
    assert status.warmup_seconds is not None
    assert status.warmup_seconds >= SIM.prompt_s, "at least as long as the prompt ran"
    assert status.connection_url and status.instance and status.instance.label
    history = await comfy_history(status.connection_url, status.instance.label)
    (entry,) = history.values()  # exactly one prompt ran on the instance: the warm-up
    assert entry["prompt"][2] == WARMUP_GRAPH
    assert entry["status"]["status_str"] == "success"
    finished_ms = entry["status"]["messages"][-1][1]["timestamp"]
    (ready_at,) = [t.at for t in status.transitions if t.to_state == S.READY]
    assert finished_ms / 1000 <= ready_at.timestamp(), "READY only after the warm-up finished"
    assert status.counters.failures == 0
    await retire(handle)


async def test_failing_warmup_destroys_and_retries_on_another_machine(
    stack: Stack, slots: dict[str, Handle]
) -> None:
    handle = slots["warmup-fails"]  # its first GPU fails every prompt (CUDA out of memory)
    status = await until(stack, handle, replaced_once)
    first, second = rentals(stack, "warmup-fails")
    assert first.faults == ["prompt_error"] and first.destroyed
    assert calls_on(stack, first.id, "DELETE"), "the failed instance was destroyed"
    assert status.counters.failures_by_reason == {FailureReason.WARMUP_FAILED.value: 1}
    assert first.machine_id in status.excluded_machines
    assert second.machine_id != first.machine_id and not second.destroyed
    assert status.instance is not None and status.instance.id == second.id
    assert status.warmup_seconds is not None, "the second attempt warmed up"
    (failed,) = reasons_into(status, S.TERMINATING)
    assert failed.startswith("warmup_failed") and "OutOfMemoryError" in failed
    assert [t.to_state for t in status.transitions].count(S.READY) == 1, "never READY unwarmed"
    await retire(handle)


# ---- 2. a failed create that still returns new_contract ---------------------------------------


async def test_failed_create_with_new_contract_is_destroyed_and_the_slot_rents_again(
    stack: Stack, slots: dict[str, Handle]
) -> None:
    handle = slots["create-fails"]
    status = await until(stack, handle, replaced_once)
    stopped, good = rentals(stack, "create-fails")
    assert stopped.faults == [] and stopped.destroyed, "the failed create's contract is gone"
    assert [c.status for c in calls_on(stack, stopped.id, "DELETE")] == [200]
    assert status.counters.failures_by_reason == {FailureReason.RENT_FAILED.value: 1}
    assert status.instance is not None and status.instance.id == good.id and not good.destroyed
    await retire(handle)
    assert all(i.destroyed for i in rentals(stack, "create-fails")), "no leaked instance"


# ---- 3. outbid ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "seen_in"),
    [("outbid-provisioning", S.PROVISIONING), ("outbid-ready", S.READY)],
)
async def test_outbid_destroys_and_rents_again(
    stack: Stack, slots: dict[str, Handle], name: str, seen_in: SlotState
) -> None:
    handle = slots[name]
    status = await until(stack, handle, replaced_once)
    first, second = rentals(stack, name)
    assert first.faults == ["outbid"] and first.destroyed
    assert calls_on(stack, first.id, "DELETE")
    assert status.counters.failures_by_reason == {FailureReason.OUTBID.value: 1}
    assert status.instance is not None and status.instance.id == second.id
    (terminating,) = [t for t in status.transitions if t.to_state == S.TERMINATING]
    assert terminating.from_state == seen_in and terminating.reason.startswith("outbid")
    await retire(handle)


# ---- 4. destroying an instance that is already gone -------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["gone-no_such_instance", "gone-not_found"],
    ids=["destroy-404-no_such_instance+show-null", "destroy-404-not_found+show-404"],
)
async def test_destroy_of_a_gone_instance_counts_as_confirmed(
    stack: Stack, slots: dict[str, Handle], name: str
) -> None:
    handle = slots[name]
    status = await until(stack, handle, in_state(S.READY))
    assert status.instance is not None
    gone_id = status.instance.id
    # Someone destroys it in the console: the watch finds it gone, the slot's destroy gets 404.
    headers = {"Authorization": f"Bearer {stack.sim.api_key}"}
    async with httpx.AsyncClient(headers=headers) as http:
        external = await http.delete(f"{stack.sim.base_url}/instances/{gone_id}/")
    assert external.status_code == 200
    status = await until(stack, handle, replaced_once)
    code = name.removeprefix("gone-")
    deletes = calls_on(stack, gone_id, "DELETE")
    assert [c.status for c in deletes] == [200, 404], "one destroy by the slot, no retry storm"
    assert status.counters.destroys == 1
    assert status.counters.failures_by_reason == {FailureReason.INSTANCE_GONE.value: 1}
    assert "failing" not in (status.last_failure or ""), f"404 {code} was not a failure"
    assert len(calls_on(stack, gone_id, "GET")) <= 3, "gone is gone: no polling storm"
    assert status.instance is not None and status.instance.id == rentals(stack, name)[1].id
    await retire(handle)


# ---- 5. fatal statuses: at once, or after the grace period ------------------------------------


async def test_fatal_status_msg_destroys_at_once_without_waiting_for_the_grace(
    stack: Stack, slots: dict[str, Handle]
) -> None:
    handle = slots["oci"]
    status = await until(stack, handle, replaced_once)
    first, second = rentals(stack, "oci")
    assert first.faults == ["oci_failed"] and first.destroyed
    (destroy,) = calls_on(stack, first.id, "DELETE")
    assert destroy.at - first.created_at < LONG_GRACE.total_seconds() / 3, "no grace period"
    assert status.counters.failures_by_reason == {FailureReason.FATAL_STATUS.value: 1}
    (reason,) = reasons_into(status, S.TERMINATING)
    assert "OCI runtime create failed" in reason
    assert status.instance is not None and status.instance.id == second.id
    await retire(handle)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("exited", FailureReason.FATAL_STATUS), ("load_failed", FailureReason.LOAD_FAILED)],
)
async def test_failure_status_is_destroyed_only_after_the_grace_period(
    stack: Stack, slots: dict[str, Handle], name: str, reason: FailureReason
) -> None:
    handle = slots[name]
    status = await until(stack, handle, replaced_once)
    first, _ = rentals(stack, name)
    assert first.faults == ["status"] and first.destroyed
    (destroy,) = calls_on(stack, first.id, "DELETE")
    bad_from = first.created_at + RUNNING_AFTER_S  # the status shows from "running" on
    assert destroy.at - bad_from >= SHORT_GRACE.total_seconds(), "the grace period was granted"
    assert status.counters.failures_by_reason == {reason.value: 1}
    (terminating,) = reasons_into(status, S.TERMINATING)
    assert terminating.startswith(f"{reason.value}: {name} for")
    await retire(handle)


async def test_ready_slot_tolerates_an_unknown_blip_and_destroys_a_lasting_offline(
    stack: Stack, slots: dict[str, Handle]
) -> None:
    handle = slots["blip"]
    status = await until(stack, handle, in_state(S.READY))
    assert status.instance is not None
    instance_id = status.instance.id
    grace = BLIP_GRACE.total_seconds()
    # One missed host heartbeat: `unknown` for half the grace, then normal again.
    blip_from = time.time()
    stack.sim.set_instance_status(instance_id, actual_status="unknown", status_msg=None)
    await asyncio.sleep(grace / 2)
    stack.sim.clear_instance_status(instance_id)
    blip_to = time.time()
    listed = [c.at for c in stack.sim.calls if c.endpoint_key == "list_v1"]
    assert any(blip_from < at < blip_to for at in listed), "the status was read during the blip"
    await asyncio.sleep(grace)
    status = await handle.query("status", result_type=SlotStatus)
    assert status.state == S.READY and status.counters.failures == 0
    assert status.instance is not None and status.instance.id == instance_id
    # The host goes offline for good: destroyed once the grace has passed, then replaced.
    offline_from = time.time()
    stack.sim.set_instance_status(instance_id, actual_status="offline", status_msg="Host offline")
    status = await until(stack, handle, replaced_once)
    (destroy,) = calls_on(stack, instance_id, "DELETE")
    assert destroy.at - offline_from >= grace
    assert status.counters.failures_by_reason == {FailureReason.FATAL_STATUS.value: 1}
    (reason,) = reasons_into(status, S.TERMINATING)
    assert reason.startswith("fatal_status: offline for")
    await retire(handle)


async def test_grace_period_survives_continue_as_new(
    stack: Stack, slots: dict[str, Handle]
) -> None:
    """`exited` for longer than the grace is destroyed, however often the slot continues-as-new.

    The dev server suggests continue-as-new after 50 events, about every 5 provisioning polls
    here, so a 6 s grace spans at least one.
    """
    handle = slots["grace-across-can"]
    first = (await wait_for_rental(stack, "grace-across-can"))[0]
    bad_from = first.created_at + RUNNING_AFTER_S
    deadline = bad_from + CAN_GRACE.total_seconds() + 3 * DEV_SERVER_TIMER_S
    while time.time() < deadline and not rentals(stack, "grace-across-can")[0].destroyed:  # noqa: ASYNC110 - polls the simulator
        await asyncio.sleep(0.1)
    runs = [run async for run in stack.client.list_workflows(f"WorkflowId='{handle.id}'")]
    renewed = [
        run.close_time.timestamp()
        for run in runs
        if run.status == WorkflowExecutionStatus.CONTINUED_AS_NEW and run.close_time is not None
    ]
    if not any(bad_from < at < deadline for at in renewed):
        pytest.skip("no continue-as-new during the bad status: nothing to prove")
    first = rentals(stack, "grace-across-can")[0]
    assert first.destroyed, (
        f"exited since {deadline - bad_from:.1f}s (grace {CAN_GRACE.total_seconds():g}s), "
        f"{len(renewed)} continue-as-new: never destroyed"
    )
    await retire(handle)
