"""The pool's rules without Temporal: idle slots, refusals, what to start or retire, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from warmpool import pool_core as core
from warmpool.environment import Environment, ModelSpec
from warmpool.models import (
    FailureReason,
    LeaseEndRequest,
    LeaseRequest,
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


def leased(rt: PoolRuntime, *indexes: int) -> PoolRuntime:
    for index in indexes:
        lease_on(rt, index, f"l{index}")
    return rt


def test_plan_starts_up_to_the_floor_and_a_buffer_above_use_within_max_slots() -> None:
    assert core.plan(runtime(), cfg(2, 4), NOW).start == 2
    assert core.plan(runtime(slot(1), slot(2, S.PROVISIONING)), cfg(2, 4), NOW).start == 0
    # one of two leased: 1 in use + buffer 1 = 2 warm: nothing to rent (no churn per lease)
    assert core.plan(leased(runtime(slot(1), slot(2)), 1), cfg(2, 4), NOW).start == 0
    # both leased: 2 + 1 = 3, within max_slots 3
    assert core.plan(leased(runtime(slot(1), slot(2)), 1, 2), cfg(2, 3), NOW).start == 1
    assert core.plan(leased(runtime(slot(1), slot(2)), 1, 2), cfg(2, 2), NOW).start == 0
    assert core.plan(runtime(slot(1), slot(2), safe_mode=True), cfg(4, 4), NOW).start == 0


def test_scale_to_zero_with_floor_and_buffer_zero() -> None:
    config = cfg(0, 4)
    config.scaling.buffer = 0
    config.scaling.scale_down_delay = timedelta(0)
    assert core.plan(runtime(), config, NOW).start == 0
    assert [i for i, _ in core.plan(runtime(slot(1)), config, NOW).retire] == [1]


def test_surplus_shrinks_only_after_the_delay_one_slot_at_a_time() -> None:
    rt = runtime(slot(1), slot(2), slot(3, dph_total=0.9))
    config = cfg(1, 4)  # target: floor 1, buffer 1 above no use = 1
    assert core.plan(rt, config, NOW).retire == []
    assert rt.surplus_since == NOW
    later = NOW + config.scaling.scale_down_delay
    assert core.plan(rt, config, later - timedelta(seconds=1)).retire == []
    first = core.plan(rt, config, later)
    assert [i for i, _ in first.retire] == [3], "the most expensive idle slot first"
    assert first.decisions and "retired after 600 s of surplus" in first.decisions[0].describe()
    rt.slots[3].retiring = True
    assert core.plan(rt, config, later).retire == [], "one at a time"
    del rt.slots[3]  # its DONE arrived
    step = config.scaling.scale_down_delay / 10
    assert core.plan(rt, config, later + step - timedelta(seconds=1)).retire == [], "a pause"
    nxt = core.plan(rt, config, later + step)
    assert [i for i, _ in nxt.retire] == [2], "newest of equal price"


def test_a_slot_stuck_on_its_way_out_blocks_scale_down_no_longer_than_the_delay() -> None:
    rt = runtime(slot(1), slot(2), slot(3, retiring=True, scaled_down=True, since=NOW))
    config = cfg(1, 4)
    rt.surplus_since = NOW - config.scaling.scale_down_delay
    assert core.plan(rt, config, NOW).retire == []
    later = NOW + config.scaling.scale_down_delay
    assert [i for i, _ in core.plan(rt, config, later).retire] == [2]


def test_demand_resets_the_surplus_clock() -> None:
    rt = runtime(slot(1), slot(2), slot(3))
    config = cfg(1, 4)
    core.plan(rt, config, NOW)
    leased(rt, 1, 2)  # 2 in use + buffer 1 = 3: no surplus any more
    assert core.plan(rt, config, NOW + timedelta(minutes=5)).retire == []
    assert rt.surplus_since is None


def test_shrink_order_gives_up_booting_rentals_first_never_leased_or_cleaning_slots() -> None:
    views = [
        slot(1),
        slot(2, S.PROVISIONING),
        slot(3, S.SEARCHING),
        slot(4, S.LEASED, lease_id="l"),
        slot(5, cleaning=True),
    ]
    assert [v.index for v in core.shrink_order(views)] == [3, 2, 1]


def test_above_max_slots_retires_at_once_and_never_a_leased_slot() -> None:
    rt = leased(runtime(slot(1), slot(2), slot(3, S.PROVISIONING), slot(4)), 4)
    result = core.plan(rt, cfg(0, 1), NOW)
    assert [i for i, _ in result.retire] == [3, 2, 1]
    assert [i for i, _ in core.plan(runtime(slot(1), draining=True), cfg(), NOW).retire] == [1]


def test_safe_mode_retires_every_slot_that_would_rent_again_but_keeps_serving_ones() -> None:
    rt = leased(
        runtime(
            slot(1),
            slot(2, S.TERMINATING),
            slot(3, S.SEARCHING),
            slot(4, S.BLOCKED),
            slot(5, S.LEASED),
            safe_mode=True,
        ),
        5,
    )
    result = core.plan(rt, cfg(1, 5), NOW)
    assert sorted(i for i, _ in result.retire) == [2, 3, 4]
    assert result.start == 0


def test_the_budget_reserves_the_price_cap_for_each_slot_still_renting() -> None:
    config = cfg(4, 4, budget_dph=2.0)
    config.slot.constraints.max_dph = 0.6
    # $0.5 held + 3 x $0.6 reserved would be $2.3: two starts fit ($1.7)
    assert core.plan(runtime(slot(1)), config, NOW).start == 2
    assert core.budget_limited(runtime(slot(1), slot(2, S.SEARCHING), slot(3, S.SEARCHING)), config)


# ---- the stopped tier ----------------------------------------------------------------------


def stopped_tier(target: int = 1) -> PoolConfig:
    config = cfg(1, 4)
    config.scaling.stopped_target = target
    config.scaling.park_after = timedelta(minutes=2)
    return config


def test_a_surplus_slot_idle_long_enough_is_parked_not_destroyed() -> None:
    rt = runtime(slot(1, since=NOW - timedelta(hours=1)), slot(2, since=NOW))
    config = stopped_tier()
    core.plan(rt, config, NOW)
    assert core.plan(rt, config, NOW + timedelta(minutes=1)).park == []
    result = core.plan(rt, config, NOW + timedelta(minutes=2))
    assert result.park == [2] and result.retire == []
    rt.slots[2].state = S.STOPPED
    assert core.plan(rt, config, NOW + timedelta(hours=1)).park == [], "the tier is full"


def test_a_parked_slot_resumes_before_anything_new_is_rented() -> None:
    rt = leased(runtime(slot(1), slot(2, S.STOPPED), slot(3, S.STOPPED)), 1)
    result = core.plan(rt, stopped_tier(2), NOW)  # 1 leased + buffer 1 = 2 warm, 1 warm now
    assert result.unpark == [3] and result.start == 0, "the longest parked first"
    rt = leased(runtime(slot(1), slot(2), slot(3, S.STOPPED)), 1, 2)
    result = core.plan(rt, stopped_tier(), NOW)
    assert result.unpark == [3] and result.start == 0


def test_parked_slots_above_the_stopped_target_retire() -> None:
    rt = runtime(slot(1), slot(2, S.STOPPED), slot(3, S.STOPPED))
    result = core.plan(rt, stopped_tier(1), NOW)
    assert [i for i, _ in result.retire] == [3]


@given(
    st.lists(st.sampled_from(list(SlotState)), max_size=12),
    st.integers(0, 8),
    st.integers(0, 8),
    st.integers(0, 3),
    st.booleans(),
    st.integers(0, 3600),
)
def test_plan_never_exceeds_max_slots_nor_gives_up_a_leased_slot(
    states: list[SlotState],
    min_ready: int,
    extra: int,
    stopped_target: int,
    leased_first: bool,
    later: int,
) -> None:
    views = [slot(i, state) for i, state in enumerate(states) if state != S.DONE]
    rt = runtime(*views)
    if leased_first and 0 in rt.slots:
        leased(rt, 0)
    config = cfg(min_ready, min_ready + extra)
    config.scaling.stopped_target = stopped_target
    core.plan(rt, config, NOW)
    result = core.plan(rt, config, NOW + timedelta(seconds=later))
    given_up = {i for i, _ in result.retire} | set(result.park)
    assert all(rt.slots[i].lease_id is None for i in given_up)
    assert not given_up & set(result.unpark)
    warm = [v for v in rt.slots.values() if v.state not in (S.STOPPED, S.STOPPING)]
    after = len(warm) - len(given_up - {v.index for v in rt.slots.values() if v.retiring})
    if result.start or result.unpark:
        assert after + result.start + len(result.unpark) <= config.max_slots


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


# ---- environment rollout and lease constraints ---------------------------------------------


def on(version: str | None, *views: SlotView) -> list[SlotView]:
    return [v.model_copy(update={"env_version": version}) for v in views]


def with_env(config: PoolConfig, *files: str) -> PoolConfig:
    env = Environment(
        models=[
            ModelSpec(url=f"https://example.com/{f}", folder="checkpoints", file=f) for f in files
        ]
    )
    return config.model_copy(update={"environment": env})


def test_a_rollout_surges_and_retires_an_old_idle_slot_only_once_a_new_one_serves() -> None:
    config = with_env(cfg(3, 3), "b")
    new = config.environment.version if config.environment else ""
    rt = runtime(*on("old", slot(1), slot(2), slot(3)))
    first = core.plan(rt, config, NOW)
    assert first.retire == [] and first.start == 1, "a replacement starts above max_slots"
    rt.slots[4] = slot(4).model_copy(update={"env_version": new})  # the replacement is READY
    second = core.plan(rt, config, NOW)
    assert [i for i, _ in second.retire] == [3], "the longest idle old slot goes"
    assert second.start == 1, "and the next old slot's replacement starts"


def test_a_rollout_retires_old_starting_and_parked_slots_at_once_never_a_leased_one() -> None:
    config = with_env(cfg(1, 4), "b")
    config.scaling.stopped_target = 1
    rt = leased(
        runtime(*on("old", slot(1), slot(2, S.PROVISIONING), slot(3, S.STOPPED), slot(4))), 4
    )
    result = core.plan(rt, config, NOW)
    assert sorted(i for i, why in result.retire) == [2, 3]
    assert all("rollout" in why for _, why in result.retire)


def test_leases_can_ask_for_a_version_or_a_node_class() -> None:
    rt = runtime(*on("v1", slot(1)), *on("v2", slot(2)))
    rt.env_versions = ["v1", "v2"]
    rt.env_classes = {"v1": [], "v2": ["FooNode"]}
    ask = LeaseRequest(holder="a", request_id="r", min_environment="v2")
    assert [v.index for v in core.matching(rt, core.idle_ready(rt), ask)] == [2]
    ask = LeaseRequest(holder="a", request_id="r", node_class="FooNode")
    assert [v.index for v in core.matching(rt, core.idle_ready(rt), ask)] == [2]
    ask = LeaseRequest(holder="a", request_id="r", node_class="BarNode")
    assert core.matching(rt, core.idle_ready(rt), ask) == []
    env = Environment()
    core.apply_environment(rt, env)
    core.apply_environment(rt, env.model_copy(update={"pip": ["rich"]}))
    core.apply_environment(rt, env)
    assert rt.env_versions[-1] == env.version and len(rt.env_versions) == 4, "re-applied: newest"


def test_a_version_the_pool_never_applied_matches_no_slot() -> None:
    rt = runtime(*on("v1", slot(1)), *on(None, slot(2)))
    rt.env_versions = ["v1"]
    ask = LeaseRequest(holder="a", request_id="r", min_environment="env-000000000000")
    assert core.matching(rt, core.idle_ready(rt), ask) == []


def test_a_slot_cleaning_after_its_lease_is_no_replacement_for_an_old_one() -> None:
    config = with_env(cfg(3, 4), "b")
    new = config.environment.version if config.environment else ""
    rt = runtime(*on("old", slot(1), slot(2)), *on(new, slot(3)))
    rt.slots[4] = slot(4, S.LEASED, cleaning=True).model_copy(update={"env_version": "old"})
    result = core.plan(rt, config, NOW)  # 3 serve, one is cleaning: no old slot goes yet
    assert result.retire == []
