"""The pool's rules without Temporal: idle slots, refusals, what to start or retire, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from warmpool import pool_core as core
from warmpool.models import (
    FailureReason,
    LeaseEndRequest,
    PoolConfig,
    PoolLease,
    PoolRuntime,
    SlotEvent,
    SlotState,
    SlotView,
)

S = SlotState
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def slot(index: int, state: SlotState = S.READY, **kw: object) -> SlotView:
    view = SlotView(
        index=index,
        state=state,
        since=NOW - timedelta(minutes=index),
        connection_url=f"http://h:{index}" if state in (S.READY, S.LEASED) else None,
        instance_id=100 + index if state not in (S.PREFLIGHT, S.SEARCHING) else None,
        dph_total=0.5,
    )
    return view.model_copy(update=kw)


def runtime(*views: SlotView, **kw: object) -> PoolRuntime:
    return PoolRuntime(slots={v.index: v for v in views}).model_copy(update=kw)


def cfg(min_ready: int = 2, max_slots: int = 4, **kw: object) -> PoolConfig:
    return PoolConfig(min_ready=min_ready, max_slots=max_slots).model_copy(update=kw)


def test_idle_ready_is_longest_idle_first_and_skips_busy_slots() -> None:
    rt = runtime(
        slot(1),
        slot(2, lease_id="l"),
        slot(3, cleaning=True),
        slot(4, retiring=True),
        slot(5),
        slot(6, S.PROVISIONING),
    )
    assert [v.index for v in core.idle_ready(rt)] == [5, 1]
    assert core.refusal(rt, core.idle_ready(rt)) is None
    assert core.refusal(runtime(), []) is not None
    assert "draining" in (core.refusal(runtime(slot(1), draining=True), [slot(1)]) or "")
    safe = runtime(slot(1), safe_mode=True, safe_reason="key")
    assert "safe mode: key" in (core.refusal(safe, [slot(1)]) or "")


def test_plan_starts_up_to_min_ready_within_max_slots() -> None:
    assert core.plan(runtime(), cfg(2, 4)).start == 2
    assert core.plan(runtime(slot(1), slot(2, S.PROVISIONING)), cfg(2, 4)).start == 0
    assert core.plan(runtime(slot(1, lease_id="a"), slot(2, lease_id="b")), cfg(2, 3)).start == 1
    assert core.plan(runtime(slot(1), slot(2), safe_mode=True), cfg(4, 4)).start == 0


def test_plan_shrinks_idle_ready_first_newest_first_never_a_leased_slot() -> None:
    rt = runtime(slot(1), slot(2), slot(3, S.PROVISIONING), slot(4, S.LEASED, lease_id="l"))
    result = core.plan(rt, cfg(1, 4))
    assert [i for i, _ in result.retire] == [2, 1]
    assert result.start == 0
    assert [i for i, _ in core.plan(rt, cfg(0, 1)).retire] == [2, 1, 3]
    assert [i for i, _ in core.plan(runtime(slot(1), draining=True), cfg()).retire] == [1]


def test_safe_mode_retires_every_slot_that_would_rent_again_but_keeps_serving_ones() -> None:
    rt = runtime(
        slot(1),
        slot(2, S.TERMINATING),
        slot(3, S.SEARCHING),
        slot(4, S.BLOCKED),
        slot(5, S.LEASED, lease_id="l"),
        safe_mode=True,
    )
    result = core.plan(rt, cfg(1, 5))
    assert sorted(i for i, _ in result.retire) == [2, 3, 4]
    assert result.start == 0


def test_the_budget_reserves_the_price_cap_for_each_slot_still_renting() -> None:
    config = cfg(4, 4, budget_dph=2.0)
    config.slot.constraints.max_dph = 0.6
    # $0.5 held + 3 x $0.6 reserved would be $2.3: two starts fit ($1.7)
    assert core.plan(runtime(slot(1)), config).start == 2
    assert core.budget_limited(runtime(slot(1), slot(2, S.SEARCHING), slot(3, S.SEARCHING)), config)


@given(
    st.lists(st.sampled_from(list(SlotState)), max_size=12),
    st.integers(0, 8),
    st.integers(0, 8),
    st.booleans(),
)
def test_plan_never_exceeds_max_slots_nor_retires_a_leased_slot(
    states: list[SlotState], min_ready: int, extra: int, leased_first: bool
) -> None:
    views = [
        slot(i, state, lease_id="l" if leased_first and i == 0 else None)
        for i, state in enumerate(states)
        if state != S.DONE
    ]
    rt = runtime(*views)
    config = cfg(min_ready, min_ready + extra)
    result = core.plan(rt, config)
    retired = {i for i, _ in result.retire}
    assert all(rt.slots[i].lease_id is None for i in retired)
    assert len(rt.slots) - len(retired) + result.start <= max(config.max_slots, len(rt.slots))
    if result.start:
        assert len(rt.slots) - len(retired) + result.start <= config.max_slots


# ---- events --------------------------------------------------------------------------------


def lease_on(rt: PoolRuntime, index: int, lease_id: str = "l1") -> PoolLease:
    lease = PoolLease(
        lease_id=lease_id,
        holder="ana",
        request_id="r",
        slot=index,
        connection_url="http://h:1",
        granted_at=NOW,
        leased_until=NOW + timedelta(hours=1),
    )
    rt.leases[lease_id] = lease
    rt.slots[index].lease_id = lease_id
    rt.slots[index].state = S.LEASED
    return lease


def event(index: int, state: SlotState, at: datetime = NOW, **kw: object) -> SlotEvent:
    return SlotEvent(index=index, state=state, at=at, reason=f"now {state.value}").model_copy(
        update=kw
    )


def test_a_slot_lost_under_a_lease_ends_it_with_the_slots_reason() -> None:
    rt = runtime(slot(1))
    lease = lease_on(rt, 1)
    failed = core.merge_event(
        rt,
        event(1, S.TERMINATING, failure=FailureReason.KEEPALIVE_LOST, reason="keepalive_lost: x"),
        now=NOW,
    )
    assert failed
    assert lease.ended_at == NOW and lease.end_reason == "slot lost: keepalive_lost: x"
    assert rt.slots[1].lease_id is None and rt.slots[1].state == S.TERMINATING


def test_a_ready_event_after_the_slot_ended_an_overdue_lease_leaves_it_idle() -> None:
    rt = runtime(slot(1))
    lease = lease_on(rt, 1)
    ended = LeaseEndRequest(lease_id="l1", reason="overdue: no end from the pool")
    ready = event(1, S.READY, ended_lease=ended, connection_url="http://h:1")
    assert not core.merge_event(rt, ready, now=NOW)
    assert lease.end_reason == "overdue: no end from the pool"
    assert [v.index for v in core.idle_ready(rt)] == [1], "cleaned and READY: idle again"


def test_a_refused_lease_ends_and_a_moved_endpoint_follows_the_lease() -> None:
    rt = runtime(slot(1), slot(2))
    refused = lease_on(rt, 1, "l1")
    core.merge_event(
        rt, event(1, S.READY, lease_id="l1", lease_refused=True, reason="refused"), now=NOW
    )
    assert refused.ended_at is not None and refused.end_reason == "refused"
    moved = lease_on(rt, 2, "l2")
    core.merge_event(rt, event(2, S.LEASED, connection_url="http://h:99"), now=NOW)
    assert moved.ended_at is None and moved.connection_url == "http://h:99"


def test_a_late_event_counts_but_does_not_move_the_state_and_done_forgets_the_slot() -> None:
    rt = runtime(slot(1, since=NOW))
    late = event(1, S.TERMINATING, at=NOW - timedelta(seconds=1), failure=FailureReason.OUTBID)
    assert core.merge_event(rt, late, now=NOW)
    assert rt.slots[1].state == S.READY
    assert rt.stats.failures_by_reason == {"outbid": 1}
    core.merge_event(rt, event(1, S.DONE, at=NOW - timedelta(seconds=5)), now=NOW)
    assert rt.slots == {}
    assert not core.merge_event(rt, event(1, S.READY), now=NOW), "an unknown slot is ignored"


def test_ended_leases_are_kept_up_to_a_bound() -> None:
    rt = runtime(slot(1))
    for i in range(core.KEEP_ENDED_LEASES + 5):
        lease = lease_on(rt, 1, f"l{i}")
        assert core.end_lease(rt, lease, "released", now=NOW + timedelta(seconds=i))
        assert not core.end_lease(rt, lease, "again", now=NOW), "ending twice is a no-op"
    assert len(rt.leases) == core.KEEP_ENDED_LEASES
    assert "l0" not in rt.leases and f"l{core.KEEP_ENDED_LEASES + 4}" in rt.leases
