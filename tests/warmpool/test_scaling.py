"""The scaling policy without Temporal: the scheduled floor, demand, and what idle costs."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from warmpool import scaling
from warmpool.models import (
    FloorPeriod,
    PoolConfig,
    PoolLease,
    PoolRuntime,
    ResizeRequest,
    ScalingPolicy,
    SlotState,
    SlotView,
    WaitingRequest,
)
from warmpool.pool_core import resized

S = SlotState
MONDAY_9_PARIS = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # 09:00 in Paris (UTC+1 in winter)


def office_hours(tz: str = "Europe/Paris") -> PoolConfig:
    return PoolConfig(
        min_ready=0,
        max_slots=8,
        scaling=ScalingPolicy(
            timezone=tz,
            schedule=[
                FloorPeriod(
                    days=["mon", "tue", "wed", "thu", "fri"],
                    start=time(8),
                    end=time(20),
                    floor=4,
                )
            ],
        ),
    )


def test_the_floor_follows_the_schedule_in_its_time_zone() -> None:
    cfg = office_hours()
    assert scaling.floor_at(cfg, MONDAY_9_PARIS)[0] == 4
    assert scaling.floor_at(cfg, MONDAY_9_PARIS - timedelta(hours=2))[0] == 0, "07:00 Paris"
    assert scaling.floor_at(cfg, MONDAY_9_PARIS + timedelta(hours=11))[0] == 0, "20:00 Paris"
    saturday = MONDAY_9_PARIS + timedelta(days=5)
    assert scaling.floor_at(cfg, saturday)[0] == 0
    half_past_seven_utc = MONDAY_9_PARIS - timedelta(minutes=30)
    assert scaling.floor_at(cfg, half_past_seven_utc)[0] == 4, "08:30 in Paris"
    assert scaling.floor_at(office_hours("Europe/London"), half_past_seven_utc)[0] == 0


def test_a_period_past_midnight_belongs_to_the_day_it_starts() -> None:
    cfg = PoolConfig(
        min_ready=1,
        scaling=ScalingPolicy(
            schedule=[FloorPeriod(days=["fri"], start=time(22), end=time(2), floor=3)]
        ),
    )
    friday_23 = datetime(2026, 12, 11, 23, 0, tzinfo=UTC)
    assert scaling.floor_at(cfg, friday_23)[0] == 3
    assert scaling.floor_at(cfg, friday_23 + timedelta(hours=3))[0] == 1, "Saturday 02:00"
    assert scaling.floor_at(cfg, friday_23 + timedelta(hours=2))[0] == 3, "Saturday 01:00"
    assert scaling.floor_at(cfg, friday_23 - timedelta(days=1))[0] == 1, "Thursday 23:00"


def test_the_next_boundary_is_the_next_start_or_end() -> None:
    cfg = office_hours()
    assert scaling.next_boundary(cfg, MONDAY_9_PARIS) == MONDAY_9_PARIS + timedelta(hours=11)
    friday_evening = MONDAY_9_PARIS + timedelta(days=4, hours=12)
    # the next boundary after Friday 21:00 is 08:00 the next day: a boundary every day is fine,
    # the floor is read again there
    assert scaling.next_boundary(cfg, friday_evening) == friday_evening + timedelta(hours=11)
    assert scaling.next_boundary(PoolConfig(), MONDAY_9_PARIS) is None


@given(st.integers(0, 14 * 24 * 60))
def test_the_floor_never_changes_between_boundaries(minutes: int) -> None:
    cfg = office_hours()
    now = MONDAY_9_PARIS + timedelta(minutes=minutes)
    boundary = scaling.next_boundary(cfg, now)
    assert boundary is not None and now < boundary <= now + timedelta(days=1)
    just_before = boundary - timedelta(seconds=1)
    assert scaling.floor_at(cfg, now)[0] == scaling.floor_at(cfg, just_before)[0]


def test_bad_policies_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        ScalingPolicy(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="must not be negative"):
        ScalingPolicy(scale_down_delay=timedelta(seconds=-1))
    with pytest.raises(ValidationError, match="days"):
        FloorPeriod(days=["monday"], start=time(8), end=time(9), floor=1)
    with pytest.raises(ValueError, match="min_ready 5 exceeds max_slots 4"):
        resized(PoolConfig(), ResizeRequest(min_ready=5))


def test_a_resize_changes_only_the_policy_fields_it_names() -> None:
    cfg = resized(office_hours(), ResizeRequest(buffer=3, stopped_target=2))
    assert cfg.scaling.buffer == 3 and cfg.scaling.stopped_target == 2
    assert cfg.scaling.schedule and cfg.scaling.timezone == "Europe/Paris"
    assert resized(cfg, ResizeRequest(schedule=[])).scaling.schedule == []


def lease(lease_id: str, slot: int) -> PoolLease:
    return PoolLease(
        lease_id=lease_id,
        holder="ana",
        request_id=lease_id,
        slot=slot,
        connection_url="http://h",
        granted_at=MONDAY_9_PARIS,
        leased_until=MONDAY_9_PARIS + timedelta(hours=1),
    )


def test_demand_is_leases_waiting_requests_and_refusals_within_the_window() -> None:
    rt = PoolRuntime(leases={"a": lease("a", 1)})
    rt.waiting.append(
        WaitingRequest.model_validate(
            {
                "request": {"holder": "b", "request_id": "w"},
                "since": MONDAY_9_PARIS,
                "deadline": MONDAY_9_PARIS + timedelta(minutes=5),
            }
        )
    )
    rt.refused["r"] = MONDAY_9_PARIS
    cfg = PoolConfig(min_ready=1, max_slots=10)
    wanted = scaling.target(rt, cfg, MONDAY_9_PARIS)
    assert (wanted.demand, wanted.value) == (3, 4)
    assert wanted.reason == "1 leased + 1 waiting + 1 refused lately + buffer 1"
    rt.refused["w"] = MONDAY_9_PARIS  # refused, then asked again as a waiting request
    assert scaling.target(rt, cfg, MONDAY_9_PARIS).demand == 3, "one user, counted once"
    scaling.prune_refused(rt, cfg, MONDAY_9_PARIS + cfg.scaling.demand_window)
    assert scaling.target(rt, cfg, MONDAY_9_PARIS).value == 3
    capped = scaling.target(rt, cfg.model_copy(update={"max_slots": 2}), MONDAY_9_PARIS)
    assert capped.value == 2 and capped.reason.endswith("capped by max_slots 2")


def test_a_target_change_is_a_decision_in_the_products_words() -> None:
    rt = PoolRuntime()
    cfg = office_hours()
    first = scaling.decide(rt, scaling.target(rt, cfg, MONDAY_9_PARIS), MONDAY_9_PARIS)
    assert first is not None
    assert first.describe() == (
        "scaled 0 → 4: schedule mon-fri 08:00-20:00=4 (Europe/Paris)"
    )
    assert scaling.decide(rt, scaling.target(rt, cfg, MONDAY_9_PARIS), MONDAY_9_PARIS) is None


def view(index: int, state: SlotState, dph: float, **kw: object) -> SlotView:
    return SlotView(
        index=index, state=state, since=MONDAY_9_PARIS, instance_id=index, dph_total=dph
    ).model_copy(update=kw)


def test_costs_are_integrated_per_tier_between_changes() -> None:
    rt = PoolRuntime(
        slots={
            1: view(1, S.READY, 0.5),
            2: view(2, S.LEASED, 0.5, lease_id="a"),
            3: view(3, S.STOPPED, 0.01),
            4: view(4, S.PROVISIONING, 0.4),
            5: SlotView(index=5, state=S.SEARCHING, since=MONDAY_9_PARIS),
        }
    )
    scaling.account(rt, MONDAY_9_PARIS)
    scaling.account(rt, MONDAY_9_PARIS + timedelta(hours=2))
    costs = scaling.cost_view(rt)
    assert costs.spend_by_tier == {"idle": 1.0, "leased": 1.0, "stopped": 0.02, "starting": 0.8}
    assert costs.spend_per_hour_by_tier == {
        "idle": 0.5,
        "leased": 0.5,
        "starting": 0.4,
        "stopped": 0.01,
    }
    assert costs.idle_gpu_hours == 2.0 and costs.leased_gpu_hours == 2.0
    assert costs.dollars_per_leased_hour == pytest.approx(2.82 / 2)


def test_lease_wait_percentiles_use_the_nearest_rank() -> None:
    rt = PoolRuntime()
    for seconds in [0.0] * 90 + [30.0] * 9 + [120.0]:
        scaling.observe_wait(rt, seconds)
    costs = scaling.cost_view(rt)
    assert costs.lease_wait_p50_s == 0.0 and costs.lease_wait_p95_s == 30.0
    assert scaling.percentile([], 0.5) is None
