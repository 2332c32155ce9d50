"""Do recorded histories still replay on today's workflow code? (no nondeterminism)

Every `tests/histories/*.json` is replayed with the worker's workflows and converter, both in
Temporal's default sandbox and with the worker's own runner (which spares the pool the
sandbox). A failure means a code change would break running workflows on deploy: patch the
change (`workflow.patched`) or, for an intended break before anything runs it, re-record with
`scripts/record_history.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from warmpool.models import PoolStatus, SlotInput, SlotState, SlotStatus
from warmpool.sandbox import LeanSandbox
from worker import UNSANDBOXED
from workflows import WORKFLOWS

R = TypeVar("R", PoolStatus, SlotStatus)
HISTORIES = Path(__file__).resolve().parent.parent / "histories"
LIFECYCLE = HISTORIES / "slot_lifecycle.json"
POOL_LEASES = HISTORIES / "pool_leases.json"
RUNNERS: dict[str, WorkflowRunner] = {
    "sandboxed": SandboxedWorkflowRunner(),
    "worker": LeanSandbox(WORKFLOWS, unsandboxed=UNSANDBOXED),
}


def history_files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_histories_are_recorded() -> None:
    assert {LIFECYCLE, POOL_LEASES} <= set(history_files()), "run scripts/record_history.py"


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("path", history_files(), ids=lambda p: p.name)
async def test_history_replays_without_nondeterminism(path: Path, runner: str) -> None:
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_runner=RUNNERS[runner],
    )
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def accepted_updates(events: Sequence[HistoryEvent]) -> list[str]:
    return [
        event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        for event in events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]


def result_of(events: Sequence[HistoryEvent], kind: type[R]) -> R:
    """The result the recorded workflow completed with."""
    done = events[-1]
    assert done.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    payloads = done.workflow_execution_completed_event_attributes.result.payloads
    [result] = pydantic_data_converter.payload_converter.from_payloads(payloads, [kind])
    assert isinstance(result, kind)
    return result


def test_pool_history_covers_leases_a_wait_a_renewal_a_park_a_resume_and_a_drain() -> None:
    events = load(POOL_LEASES).events
    status = result_of(events, PoolStatus)
    assert status.draining and not status.slots and status.granted_total == 3
    assert [lease.end_reason for lease in status.recent_leases] == ["released"] * 3
    assert accepted_updates(events) == ["lease", "renew", "release", "release", "lease", "release"]
    messages = "\n".join(
        p.data.decode()
        for event in events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        for p in event.activity_task_scheduled_event_attributes.input.payloads
    )
    assert '"park":' in messages and '"unpark":' in messages, "the stopped tier was exercised"
    assert any(
        event.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED for event in events
    ), "scaling decisions are in the history (the memo)"
    signals = [
        event.workflow_execution_signaled_event_attributes.signal_name
        for event in events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]
    assert "request_lease" in signals and "drain" in signals


def test_lifecycle_history_covers_failure_replacement_lease_and_retire() -> None:
    """A re-recording must keep exercising the paths the replay is meant to protect."""
    events = load(LIFECYCLE).events
    status = result_of(events, SlotStatus)
    assert status.state == SlotState.DONE
    assert status.counters.failures_by_reason == {"no_space": 1, "keepalive_lost": 1}
    assert status.counters.rents == 3 and status.counters.destroys == 3
    states = [t.to_state for t in status.transitions]
    assert states.count(SlotState.READY) == 3, "two provisions and one clean after a lease"
    assert SlotState.LEASED in states and SlotState.DRAINING in states
    assert accepted_updates(events) == ["assign_lease", "end_lease"]


@workflow.defn(name="WarmSlotWorkflow", sandboxed=False)
class ReorderedSlotWorkflow:
    """Same name, different first command: what a careless edit to the workflow looks like."""

    @workflow.run
    async def run(self, input: SlotInput) -> None:
        await workflow.sleep(timedelta(seconds=1))


async def test_replayer_catches_a_changed_workflow() -> None:
    """Proves the replay test can fail: it is not vacuously green."""
    replayer = Replayer(workflows=[ReorderedSlotWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(load(LIFECYCLE), raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, workflow.NondeterminismError)
