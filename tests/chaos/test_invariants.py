"""The chaos suite's checks catch what they are for, and the simulator counts what it injects."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from chaos import invariants as inv
from chaos.report import ScenarioResult, render, render_summary
from vastsim import Simulator
from warmpool.models import (
    InstanceView,
    PoolLease,
    SlotCounters,
    SlotState,
    SlotStatus,
)

S = SlotState
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def slot(index: int, state: SlotState, instance_id: int | None) -> SlotStatus:
    return SlotStatus(
        workflow_id=f"warmpool/p/slot-{index}",
        pool="p",
        index=index,
        state=state,
        attempt=1,
        instance=InstanceView(id=instance_id) if instance_id else None,
        offer=None,
        image_used=None,
        connection_url=None,
        port_report=None,
        lease=None,
        last_lease_end=None,
        counters=SlotCounters(),
        transitions=[],
        last_failure=None,
        blocked_reason=None,
        retiring=False,
        state_since=None,
        ready_since=None,
        time_to_ready_s=None,
        warmup_seconds=None,
        excluded_machines=[],
        log_tail=[],
    )


def instance(id: int, label: str, destroyed: bool = False) -> inv.SimInstance:
    return inv.SimInstance(id=id, label=label, destroyed=destroyed)


def test_an_unheld_live_instance_is_an_orphan_and_a_destroyed_one_is_not() -> None:
    instances = [instance(1, "wp.p.0.1"), instance(2, "wp.p.1.1"), instance(3, "wp.p.1.2", True)]
    check = inv.no_orphans(instances, [slot(0, S.READY, 1)])
    assert check.checked == 2
    assert check.violations == ["instance 2 (wp.p.1.1) is held by no slot"]


def test_two_rentals_for_one_attempt_or_two_live_for_one_slot_are_double_rents() -> None:
    history = [instance(1, "wp.p.0.1", True), instance(2, "wp.p.0.1", True)]
    history += [instance(3, "wp.p.1.1"), instance(4, "wp.p.1.2"), instance(5, "wp.p.2.1")]
    check = inv.no_double_rent(history)
    assert check.checked == 4
    assert check.violations == [
        "2 instances created for label wp.p.0.1",
        "2 live instances for slot 1 of pool p",
    ]
    assert (
        inv.no_double_rent([instance(1, "wp.p.0.1", True), instance(2, "wp.p.0.2")]).violations
        == []
    )


def test_every_slot_ready_wants_the_count_and_the_leased_number() -> None:
    slots = [slot(0, S.READY, 1), slot(1, S.LEASED, 2)]
    assert inv.all_ready(slots, expected=2, leased=1).violations == []
    assert inv.all_ready(slots, expected=3, leased=1).violations == ["2 running slots, expected 3"]
    stuck = inv.all_ready([slot(0, S.PROBING, 1)], expected=1)
    assert stuck.violations == ["slot 0 is PROBING"]


def test_a_lease_must_have_ended_with_a_reason() -> None:
    def lease(lease_id: str, reason: str | None) -> PoolLease:
        return PoolLease(
            lease_id=lease_id,
            holder="h",
            request_id=lease_id,
            slot=0,
            connection_url="http://x",
            granted_at=NOW,
            leased_until=NOW,
            ended_at=NOW if reason is not None else None,
            end_reason=reason,
        )

    check = inv.leases_ended([lease("a", "released"), lease("b", None)], ["a", "b", "c"])
    assert check.violations == [
        "lease b has not ended with a reason",
        "lease c is unknown to the pool",
    ]


def test_the_report_counts_violations_and_errors() -> None:
    ok = ScenarioResult(name="x", title="t", faults={"kill": 2}, checks=[inv.expect("a", True, "")])
    bad = ScenarioResult(
        name="y", title="t", checks=[inv.expect("b", False, "broken", checked=3)], error="boom"
    )
    assert (ok.injected, ok.checked, ok.violations) == (2, 1, 0)
    assert (bad.checked, bad.violations) == (3, 2)
    assert "VIOLATION b: broken" in render(bad) and "ERROR: boom" in render(bad)
    assert render_summary([ok]).endswith("PASS: 0 violations")
    assert render_summary([ok, bad]).endswith("FAIL: 2 violation(s)")


async def test_the_simulator_counts_firings_per_fault_even_once_used_up() -> None:
    async with Simulator() as sim, httpx.AsyncClient(base_url=sim.control_url) as control:
        once = (await control.post("/faults", json={"kind": "server_error", "count": 1})).json()
        never = (
            await control.post("/faults", json={"kind": "rate_limit", "probability": 0})
        ).json()
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as api:
            codes = [(await api.get("/users/current/")).status_code for _ in range(3)]
        assert codes == [500, 200, 200]
        state = (await control.get("/state")).json()
        assert state["faults_fired"] == {once["id"]: 1}
        assert [(f["id"], f["fired"]) for f in state["faults"]] == [(never["id"], 0)]
