"""The reaper's ownership rule: only an unowned, verified, old instance is an orphan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.reaper import to_candidate
from warmpool.cli.reaper import render_report
from warmpool.models import SlotState
from warmpool.reaper import (
    Candidate,
    Reaped,
    ReaperInput,
    ReaperReport,
    SlotClaim,
    Verdict,
    decide,
    saved_per_hour,
    slots_named,
)
from warmpool.vast import Instance

S = SlotState
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=15)
OLD = NOW - timedelta(hours=2)


def inst(instance_id: int, label: str | None, *, started: datetime | None = OLD) -> Candidate:
    return Candidate(instance_id=instance_id, label=label, dph_total=0.5, started_at=started)


def live(index: int, state: SlotState, attempt: int, instance_id: int | None) -> SlotClaim:
    return SlotClaim(index=index, live=True, state=state, attempt=attempt, instance_id=instance_id)


def verdicts(candidates: list[Candidate], claims: list[SlotClaim]) -> list[Verdict]:
    return [d.verdict for d in decide(candidates, claims, pool="p", now=NOW, grace=GRACE)]


def test_an_instance_a_live_slot_holds_is_owned_however_old() -> None:
    assert verdicts([inst(1, "wp.p.0.3")], [live(0, S.READY, 3, 1)]) == [Verdict.OWNED]


def test_ownership_is_by_instance_id_not_by_label() -> None:
    """Slot 2 holds instance 1 whatever its label says; slot 0 (named) holds another."""
    claims = [live(0, S.READY, 3, 9), live(2, S.LEASED, 1, 1)]
    assert verdicts([inst(1, "wp.p.0.3")], claims) == [Verdict.OWNED]


def test_an_old_instance_of_a_slot_that_is_gone_or_never_was_is_an_orphan() -> None:
    claims = [SlotClaim(index=0, live=False, detail="workflow terminated")]
    decisions = decide(
        [inst(1, "wp.p.0.3"), inst(2, "wp.p.5.1")], claims, pool="p", now=NOW, grace=GRACE
    )
    assert [d.verdict for d in decisions] == [Verdict.ORPHAN, Verdict.ORPHAN]
    assert decisions[0].reason == "slot 0 is not running"


def test_a_second_instance_for_a_slot_that_holds_another_is_an_orphan() -> None:
    """A double rent is cleaned up: the slot holds 9, so 1 (same label) goes."""
    assert verdicts([inst(1, "wp.p.0.3")], [live(0, S.PROVISIONING, 3, 9)]) == [Verdict.ORPHAN]


def test_a_young_unowned_instance_is_kept_for_the_grace_period() -> None:
    young = inst(1, "wp.p.4.1", started=NOW - GRACE + timedelta(seconds=1))
    just_old = inst(2, "wp.p.4.2", started=NOW - GRACE)
    assert verdicts([young, just_old], []) == [Verdict.IN_GRACE, Verdict.ORPHAN]


def test_a_rent_in_flight_protects_the_label_of_its_attempt_only() -> None:
    renting = [live(0, S.RENTING, 3, None)]
    assert verdicts([inst(1, "wp.p.0.3")], renting) == [Verdict.RENT_IN_FLIGHT]
    assert verdicts([inst(1, "wp.p.0.2")], renting) == [Verdict.ORPHAN]
    # The same attempt, but the slot is past renting without it (the rent gave up): orphan.
    assert verdicts([inst(1, "wp.p.0.3")], [live(0, S.BACKOFF, 3, None)]) == [Verdict.ORPHAN]


def test_an_unreadable_slot_protects_every_instance_its_label_names() -> None:
    claims = [SlotClaim(index=0, live=None, detail="status query failed: timeout")]
    decisions = decide([inst(1, "wp.p.0.3")], claims, pool="p", now=NOW, grace=GRACE)
    assert decisions[0].verdict == Verdict.UNVERIFIED
    assert "timeout" in decisions[0].reason


def test_unknown_age_is_kept_and_foreign_labels_are_never_this_pools() -> None:
    candidates = [inst(1, "wp.p.0.1", started=None), inst(2, "wp.other.0.1"), inst(3, None)]
    assert verdicts(candidates, []) == [Verdict.AGE_UNKNOWN, Verdict.FOREIGN, Verdict.FOREIGN]


def test_a_prefixed_label_that_names_no_slot_is_an_orphan() -> None:
    decisions = decide([inst(1, "wp.p.junk")], [], pool="p", now=NOW, grace=GRACE)
    assert decisions[0].verdict == Verdict.ORPHAN
    assert decisions[0].reason == "label names no slot"


def test_slots_named_are_this_pools_distinct_indices() -> None:
    candidates = [inst(1, "wp.p.3.1"), inst(2, "wp.p.3.2"), inst(3, "wp.p.0.1")]
    candidates += [inst(4, "wp.q.7.1"), inst(5, "wp.p.bad"), inst(6, None)]
    assert slots_named(candidates, "p") == [0, 3]


def test_saved_per_hour_counts_only_what_was_still_billing() -> None:
    reaped = [
        Reaped(instance_id=1, label="wp.p.0.1", dph_total=0.25),
        Reaped(instance_id=2, label="wp.p.1.1", dph_total=0.5, already_gone=True),
        Reaped(instance_id=3, label="wp.p.2.1", dph_total=0.125),
    ]
    assert saved_per_hour(reaped) == 0.375


def test_a_stopped_instance_bills_its_disk_and_is_reaped_like_a_running_one() -> None:
    """Parked or lost, a stopped instance still bills storage: an unowned one is an orphan."""
    row = {"label": "wp.p.4.1", "dph_total": 0.5, "disk_space": 250, "storage_cost": 0.144}
    started = OLD.timestamp()
    running = to_candidate(
        Instance.model_validate({"id": 1, "actual_status": "running", "start_date": started, **row})
    )
    stopped = to_candidate(
        Instance.model_validate({"id": 2, "actual_status": "stopped", "start_date": started, **row})
    )
    assert (running.dph_total, running.stopped) == (0.5, False)
    assert stopped.stopped and stopped.dph_total == pytest.approx(0.05)  # 250 GB x 0.144 / 720
    owned = inst(3, "wp.p.0.1").model_copy(update={"stopped": True})
    decisions = decide(
        [running, stopped, owned],
        [live(0, S.READY, 1, 3)],
        pool="p",
        now=NOW,
        grace=GRACE,
    )
    assert [d.verdict for d in decisions] == [Verdict.ORPHAN, Verdict.ORPHAN, Verdict.OWNED]
    reaped = [Reaped(instance_id=c.instance_id, label=c.label, dph_total=c.dph_total or 0.0)
              for c in (running, stopped)]  # fmt: skip
    assert saved_per_hour(reaped) == pytest.approx(0.55)
    report = ReaperReport(
        pool="p",
        checked_at=NOW,
        grace=GRACE,
        dry_run=False,
        listed=3,
        decisions=decisions,
        destroyed=reaped,
        failed=[],
        saved_per_hour=saved_per_hour(reaped),
    )
    text = render_report(report)
    assert "destroyed 2 wp.p.4.1 $0.0500/h stopped (disk only)" in text
    assert "destroyed 1 wp.p.4.1 $0.5000/h\n" in text
    assert "owned          3 wp.p.0.1 [stopped]: slot 0 holds it" in text


def test_reaper_input_rejects_a_bad_pool_or_a_negative_grace() -> None:
    with pytest.raises(ValueError, match="invalid pool name"):
        ReaperInput(pool="No.Dots")
    with pytest.raises(ValueError, match="grace must not be negative"):
        ReaperInput(pool="p", grace=timedelta(seconds=-1))


STATES = st.sampled_from(list(SlotState))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Candidate], list[SlotClaim]]:
    slots = draw(st.lists(st.integers(0, 4), unique=True, max_size=5))
    claims = [
        SlotClaim(
            index=i,
            live=draw(st.sampled_from([True, False, None])),
            state=draw(STATES),
            attempt=draw(st.integers(0, 3)),
            instance_id=draw(st.one_of(st.none(), st.integers(1, 8))),
        )
        for i in slots
    ]
    candidates = [
        inst(
            i,
            draw(st.sampled_from([f"wp.p.{k}.{a}" for k in range(5) for a in range(4)])),
            started=draw(st.one_of(st.none(), st.just(OLD), st.just(NOW))),
        )
        for i in draw(st.lists(st.integers(1, 8), unique=True, max_size=8))
    ]
    return candidates, claims


@given(worlds())
def test_an_orphan_is_never_held_unverified_or_young(
    world: tuple[list[Candidate], list[SlotClaim]],
) -> None:
    candidates, claims = world
    held = {c.instance_id for c in claims if c.live and c.instance_id is not None}
    unreadable = {c.index for c in claims if c.live is None}
    for d in decide(candidates, claims, pool="p", now=NOW, grace=GRACE):
        if d.verdict != Verdict.ORPHAN:
            continue
        c = d.candidate
        assert c.instance_id not in held
        assert c.started_at is not None and NOW - c.started_at >= GRACE
        assert int((c.label or "").split(".")[2]) not in unreadable
