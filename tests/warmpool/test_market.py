"""The pool's market rules: which failures exclude a machine, which are systemic (safe mode)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from warmpool import market
from warmpool.models import FailureReason, PoolRuntime, SlotEvent, SlotState

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
DAY = timedelta(hours=24)
F = FailureReason
HOST_ONLY = [F.FATAL_STATUS, F.LOAD_FAILED, F.OUTBID, F.FIREWALL, F.RENT_FAILED, F.KEEPALIVE_LOST]


def failed(
    machine: int,
    reason: FailureReason,
    *,
    image: str = "img:1",
    host_fault: bool = True,
    image_failure: bool = False,
) -> SlotEvent:
    return SlotEvent(
        index=0,
        state=SlotState.TERMINATING,
        at=NOW,
        reason=f"{reason.value} on {machine}",
        failure=reason,
        machine_id=machine,
        image=image,
        host_fault=host_fault,
        image_failure=image_failure,
    )


def record(rt: PoolRuntime, event: SlotEvent, threshold: int = 3) -> str | None:
    return market.record_failure(rt, event, now=NOW, exclude_for=DAY, threshold=threshold)


@given(st.lists(st.tuples(st.integers(1, 50), st.sampled_from(HOST_ONLY)), max_size=60))
def test_host_failures_on_any_machines_never_trip_safe_mode(
    failures: list[tuple[int, FailureReason]],
) -> None:
    rt = PoolRuntime()
    assert all(record(rt, failed(m, r), threshold=1) is None for m, r in failures)
    assert market.excluded_ids(rt, NOW) == sorted({m for m, _ in failures})


def test_the_same_image_failure_on_distinct_machines_is_systemic() -> None:
    rt = PoolRuntime()
    assert record(rt, failed(1, F.COMFY_NEVER_READY)) is None
    assert record(rt, failed(1, F.COMFY_NEVER_READY)) is None, "one machine twice is one"
    assert record(rt, failed(2, F.WARMUP_FAILED)) is None, "another failure is another count"
    assert record(rt, failed(3, F.COMFY_NEVER_READY, image="other:2")) is None
    assert record(rt, failed(4, F.COMFY_NEVER_READY)) is None
    reason = record(rt, failed(5, F.COMFY_NEVER_READY))
    assert reason is not None
    assert reason.startswith("image img:1 failed with comfy_never_ready on 3 distinct machines")
    assert "(1, 4, 5)" in reason


def test_an_image_failure_flag_makes_any_reason_a_suspect() -> None:
    rt = PoolRuntime()
    assert record(rt, failed(1, F.NO_SPACE, image_failure=True), threshold=2) is None
    assert record(rt, failed(2, F.NO_SPACE, image_failure=True), threshold=2) is not None
    assert market.suspect_key(failed(3, F.NO_SPACE)) is None, "no_space alone is the host's disk"


def test_a_ready_image_forgets_its_suspects_only() -> None:
    rt = PoolRuntime()
    record(rt, failed(1, F.COMFY_NEVER_READY))
    record(rt, failed(2, F.COMFY_NEVER_READY, image="other:2"))
    market.image_ready(rt, "img:1")
    assert list(rt.suspects) == ["other:2|comfy_never_ready"]
    assert record(rt, failed(3, F.COMFY_NEVER_READY)) is None
    assert record(rt, failed(4, F.COMFY_NEVER_READY)) is None, "the count started again"


def test_a_rejected_key_or_portal_token_is_systemic_at_once() -> None:
    for reason in (F.PROVIDER_KEY_REJECTED, F.PORTAL_UNAUTHORIZED):
        rt = PoolRuntime()
        why = record(rt, failed(1, reason, host_fault=False), threshold=99)
        assert why is not None and why.startswith(reason.value)
        assert rt.excluded == {}, "a configuration error is not the host's"


def test_exclusions_expire_and_a_later_failure_extends_them() -> None:
    rt = PoolRuntime()
    market.exclude(rt, 7, now=NOW, until=NOW + DAY, reason="outbid", slot=1)
    market.exclude(rt, 7, now=NOW, until=NOW + timedelta(hours=1), reason="firewall", slot=2)
    assert rt.excluded[7].reason == "outbid", "never shortened"
    market.exclude(rt, 7, now=NOW, until=NOW + 2 * DAY, reason="firewall", slot=2)
    assert rt.excluded[7].until == NOW + 2 * DAY
    assert market.excluded_ids(rt, NOW + DAY) == [7]
    market.prune(rt, NOW + 2 * DAY)
    assert rt.excluded == {} and market.excluded_ids(rt, NOW + 2 * DAY) == []


def test_the_exclusion_list_is_bounded_oldest_first() -> None:
    rt = PoolRuntime()
    for machine in range(market.MAX_EXCLUDED + 5):
        at = NOW + timedelta(seconds=machine)
        market.exclude(rt, machine, now=at, until=at + DAY, reason="outbid", slot=0)
    assert len(rt.excluded) == market.MAX_EXCLUDED
    assert min(rt.excluded) == 5
