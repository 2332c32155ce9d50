"""The slot's rules without Temporal: leases, failures, images, logs, what a failed step means."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from warmpool import slot_core as core
from warmpool.environment import Environment, ModelSpec
from warmpool.models import (
    FailureReason,
    InstanceView,
    Lease,
    OfferSummary,
    PortReport,
    SlotConfig,
    SlotRuntime,
    SlotState,
    SshConfig,
    SshLogBatch,
)
from warmpool.slot_core import LeaseAnswer, RentOutcome

S = SlotState
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
CFG = SlotConfig(fallback_image="small:1")


def lease(lease_id: str = "l1", minutes: int = 10) -> Lease:
    return Lease(
        lease_id=lease_id,
        holder="ana",
        request_id=f"r-{lease_id}",
        granted_at=NOW,
        leased_until=NOW + timedelta(minutes=minutes),
    )


def ready(**kw: object) -> SlotRuntime:
    rt = SlotRuntime(
        state=S.READY,
        instance=InstanceView(id=7, machine_id=70, ssh_host="h", ssh_port=22),
        connection_url="http://h:1",
    )
    return rt.model_copy(update=kw)


# ---- leases --------------------------------------------------------------------------------


def test_a_ready_slot_accepts_one_lease_and_renews_only_that_one() -> None:
    rt = ready()
    assert core.assign_lease(rt, lease("l1")) == LeaseAnswer.ACCEPTED
    assert rt.counters.leases == 1
    assert core.assign_lease(rt, lease("l2")) == LeaseAnswer.REFUSED, "never two leases"
    assert core.assign_lease(rt, lease("l1", minutes=20)) == LeaseAnswer.RENEWED
    assert rt.lease is not None and rt.lease.leased_until == NOW + timedelta(minutes=20)
    assert rt.counters.leases == 1, "a renewal is not a new lease"


@given(st.sampled_from([s for s in SlotState if s != S.READY]))
def test_a_slot_that_is_not_ready_refuses(state: SlotState) -> None:
    rt = ready(state=state)
    assert core.assign_lease(rt, lease()) == LeaseAnswer.REFUSED
    assert rt.lease is None


def test_a_retiring_or_uncleaned_slot_refuses_and_an_ended_lease_stays_ended() -> None:
    assert core.assign_lease(ready(retiring=True), lease()) == LeaseAnswer.REFUSED
    assert core.assign_lease(ready(needs_clean=True), lease()) == LeaseAnswer.REFUSED
    rt = ready()
    core.assign_lease(rt, lease("l1"))
    core.end_lease(rt, "released", now=NOW)
    assert rt.lease is None and rt.last_lease_end is not None
    assert rt.last_lease_end.reason == "released" and rt.last_lease_end.holder == "ana"
    assert core.assign_lease(rt, lease("l1")) == LeaseAnswer.ENDED, "a late repeat"
    core.end_lease(rt, "again", now=NOW)
    assert rt.last_lease_end.reason == "released", "ending nothing changes nothing"


def test_clean_pending_and_overdue() -> None:
    rt = ready(state=S.LEASED, lease=lease(minutes=10))
    assert core.lease_overdue_at(rt, CFG) == NOW + timedelta(minutes=10) + CFG.lease_overdue_grace
    assert core.lease_overdue_at(ready(), CFG) is None
    assert core.clean_pending(ready(needs_clean=True), cleaning=False)
    assert not core.clean_pending(ready(needs_clean=True, retiring=True), cleaning=False)
    assert not core.clean_pending(ready(needs_clean=True, state=S.TERMINATING), cleaning=False)
    assert core.clean_pending(ready(state=S.TERMINATING), cleaning=True)


# ---- failures, images, terminate -------------------------------------------------------------


def test_a_host_failure_excludes_the_machine_and_an_image_failure_picks_the_fallback() -> None:
    rt = ready()
    note = core.record_failure(rt, CFG, FailureReason.NO_SPACE, "disk", image_failure=True)
    assert note.host_fault and note.machine_id == 70 and note.image_failure
    assert rt.excluded_machines == [70] and rt.counters.consecutive_failures == 1
    assert rt.last_failure == "no_space: disk"
    assert core.image_for(rt, CFG) == "small:1"
    assert core.image_for(rt, CFG) == "small:1", "asking again (a rent retried) keeps it"
    rt.use_fallback_image = False
    assert core.image_for(rt, CFG) == CFG.image


def test_a_failure_without_an_instance_names_the_offers_machine() -> None:
    rt = SlotRuntime(offer=OfferSummary(id=1, machine_id=9))
    assert core.record_failure(rt, CFG, FailureReason.RENT_FAILED, "x").machine_id == 9
    rt = ready()
    note = core.record_failure(rt, CFG, FailureReason.PORTAL_UNAUTHORIZED, "401", exclude=False)
    assert not note.host_fault and rt.excluded_machines == []


def test_the_slots_own_exclusions_are_bounded() -> None:
    rt = SlotRuntime()
    for machine in range(core.MAX_EXCLUDED + 3):
        rt.offer = OfferSummary(id=machine, machine_id=machine)
        core.record_failure(rt, CFG, FailureReason.OUTBID, "x")
    assert rt.excluded_machines == list(range(3, core.MAX_EXCLUDED + 3))


def test_after_terminate() -> None:
    assert core.after_terminate(ready(retiring=True))[0] == S.DONE
    rt = ready(block_after_terminate="configuration error: 401")
    assert core.after_terminate(rt) == (S.BLOCKED, "configuration error: 401")
    assert rt.blocked_reason == "configuration error: 401" and rt.block_after_terminate is None
    rt = ready(needs_clean=True)
    assert core.after_terminate(rt)[0] == S.BACKOFF
    assert rt.connection_url is None and not rt.needs_clean


def test_what_a_failed_rent_means() -> None:
    assert core.rent_outcome("VastOfferUnavailable") == RentOutcome.SEARCH_AGAIN
    assert core.rent_outcome("VastCreateFailed") == RentOutcome.HOST_REFUSED
    assert core.rent_outcome("VastRequestRejected") == RentOutcome.REJECTED
    assert core.rent_outcome("VastAuthError") == RentOutcome.KEY_REJECTED
    for api_trouble in ("VastRateLimited", "VastServerError", "VastTransportError", None):
        assert core.rent_outcome(api_trouble) == RentOutcome.ASK_AGAIN


def test_what_a_failed_probe_means() -> None:
    firewall = core.readiness_failure("Firewall", "timed out", timed_out=False, timeout="5m")
    assert firewall.reason == FailureReason.FIREWALL and firewall.exclude
    gate = core.readiness_failure("PortalUnauthorized", "401", timed_out=False, timeout="5m")
    assert not gate.exclude and gate.block is not None
    late = core.readiness_failure(None, "x", timed_out=True, timeout="0:05:00")
    assert late.reason == FailureReason.COMFY_NEVER_READY and "0:05:00" in late.detail
    assert core.validation_failure(PortReport(candidates=[], url="http://h:1")) is None
    unauthorized = core.validation_failure(PortReport(candidates=[], unauthorized=True))
    assert unauthorized is not None and unauthorized.block is not None
    invalid = core.validation_failure(PortReport(candidates=[]))
    assert invalid is not None and invalid.reason == FailureReason.PORTS_INVALID


# ---- logs --------------------------------------------------------------------------------


def batch(offset: int, lines: list[str], instance_id: int = 7, epoch: int = 0) -> SshLogBatch:
    offsets = [offset + 10 * i for i in range(len(lines))]
    return SshLogBatch(
        instance_id=instance_id,
        path="/log",
        epoch=epoch,
        offset=offset,
        end=offset + 10 * len(lines),
        line_offsets=offsets,
        lines=lines,
    )


@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_log_batches_re_sent_in_any_overlap_keep_every_line_once(starts: list[int]) -> None:
    """Batches of a file's lines 0..9 from arbitrary starts, in order, possibly re-sent."""
    rt = ready()
    lines = [f"line {i}" for i in range(10)]
    for start in sorted(starts):
        core.merge_log_batch(rt, batch(10 * start, lines[start:]), keep=50)
    header, *kept = rt.log_tail
    assert header == "--- instance 7 ---"
    assert kept == lines[min(starts) :]


def test_a_late_batch_of_another_instance_is_dropped_and_the_tail_is_bounded() -> None:
    rt = ready()
    core.merge_log_batch(rt, batch(0, ["old"], instance_id=6), keep=3)
    assert rt.log_tail == []
    core.merge_log_batch(rt, batch(0, [f"l{i}" for i in range(5)]), keep=3)
    assert rt.log_tail == ["l2", "l3", "l4"] and rt.log_lines_total == 6


def test_logs_are_followed_only_while_starting() -> None:
    cfg = SlotConfig(ssh=SshConfig(logs=True))
    assert core.collector_target(ready(state=S.PROVISIONING), cfg) is not None
    assert core.collector_target(ready(), cfg) is None, "READY stops the collector"
    assert core.collector_target(ready(state=S.PROBING, retiring=True), cfg) is None
    assert core.collector_target(ready(state=S.PROBING, log_failed_instance=7), cfg) is None
    assert core.collector_target(ready(state=S.PROBING), SlotConfig()) is None


def test_with_an_environment_the_readiness_wait_lasts_as_long_as_the_environment_may() -> None:
    env = Environment(
        models=[ModelSpec(url="https://example.com/a", folder="checkpoints", file="a")]
    )
    plain = SlotConfig()
    assert core.with_environment_wait(plain) is plain
    cfg = core.with_environment_wait(plain.model_copy(update={"environment": env}))
    assert cfg.probe.readiness_timeout == cfg.environment_timeout > timedelta(minutes=5)
    optional = env.model_copy(
        update={"models": [env.models[0].model_copy(update={"required": False})]}
    )
    unchanged = plain.model_copy(update={"environment": optional})
    assert core.with_environment_wait(unchanged).probe.readiness_timeout == timedelta(minutes=5)
