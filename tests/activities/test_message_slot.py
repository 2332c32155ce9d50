"""`pool.message_slot`: the pool's messages to its slots, sent through the worker's client."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from temporalio import workflow
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.slots import message_slot
from tests.helpers import new_queue
from warmpool.models import Lease, LeaseEndRequest, SlotEvent, SlotMessage, SlotState

NOW = datetime(2026, 11, 23, tzinfo=UTC)
LEASE = Lease(lease_id="l1", holder="ann", request_id="r1", granted_at=NOW, leased_until=NOW)


@workflow.defn(sandboxed=False)
class Recorder:
    """Stands in for a slot: keeps the leases it is assigned until told to stop."""

    def __init__(self) -> None:
        self.leases: list[Lease] = []
        self.done = False

    @workflow.run
    async def run(self) -> list[Lease]:
        await workflow.wait_condition(lambda: self.done)
        return self.leases

    @workflow.update
    def assign_lease(self, lease: Lease) -> SlotEvent:
        self.leases.append(lease)
        return SlotEvent(
            index=0, state=SlotState.LEASED, at=workflow.now(), reason="leased", lease_id="l1"
        )

    @workflow.signal
    def retire(self, reason: str) -> None:
        self.done = True

    @workflow.update
    def end_lease(self, request: LeaseEndRequest) -> SlotEvent:
        return SlotEvent(index=0, state=SlotState.READY, at=workflow.now(), reason=request.reason)


def test_a_message_carries_exactly_one_signal_or_update() -> None:
    assert SlotMessage(workflow_id="s", assign_lease=LEASE).content() == ("assign_lease", LEASE)
    assert SlotMessage(workflow_id="s", retire="bye").content() == ("retire", "bye")
    with pytest.raises(ValidationError, match="exactly one signal or update"):
        SlotMessage(workflow_id="s")
    with pytest.raises(ValidationError, match="exactly one signal or update"):
        SlotMessage(
            workflow_id="s", retire="bye", end_lease=LeaseEndRequest(lease_id="l", reason="x")
        )


def test_a_message_survives_the_data_converter_with_its_empty_fields() -> None:
    """The converter writes the unset signals as nulls; they must not count as set."""
    message = SlotMessage(workflow_id="s", end_lease=LeaseEndRequest(lease_id="l", reason="x"))
    (payload,) = pydantic_data_converter.payload_converter.to_payloads([message])
    assert json.loads(payload.data)["assign_lease"] is None
    (back,) = pydantic_data_converter.payload_converter.from_payloads([payload], [SlotMessage])
    assert back.content() == ("end_lease", message.end_lease)


async def test_delivers_to_a_running_slot_and_reports_a_finished_one(
    dev_env: WorkflowEnvironment,
) -> None:
    queue = new_queue()
    async with Worker(dev_env.client, task_queue=queue, workflows=[Recorder]):
        handle = await dev_env.client.start_workflow(
            Recorder.run, id=f"slot-{queue}", task_queue=queue
        )
        run = ActivityEnvironment(client=dev_env.client).run
        assign = SlotMessage(workflow_id=handle.id, assign_lease=LEASE)
        leased = await run(message_slot, assign)
        assert leased is not None and (leased.state, leased.lease_id) == (SlotState.LEASED, "l1")
        end = SlotMessage(
            workflow_id=handle.id, end_lease=LeaseEndRequest(lease_id="l1", reason="done")
        )
        answer = await run(message_slot, end)
        assert answer is not None and (answer.state, answer.reason) == (SlotState.READY, "done")
        retire = SlotMessage(workflow_id=handle.id, retire="test over")
        assert await run(message_slot, retire) is None, "a signal has no answer"
        assert await asyncio.wait_for(handle.result(), 10) == [LEASE]
        for late in (SlotMessage(workflow_id=handle.id, retire="again"), end):
            assert await run(message_slot, late) is None, "nobody left to tell is not an error"
