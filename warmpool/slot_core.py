"""What does a slot decide? Its rules as plain functions over `SlotRuntime`, no Temporal.

`workflows/slot.py` orchestrates (activities, timers, messages) and asks these functions what
each outcome means; they run in microseconds under plain pytest and hypothesis
(`tests/warmpool/test_slot_core.py`). Functions named for a verb change the runtime they are
given; the others only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from warmpool.errors import ErrorType
from warmpool.models import (
    FailureReason,
    InstanceView,
    Lease,
    LeaseEnd,
    PortReport,
    SlotConfig,
    SlotRuntime,
    SlotState,
    SshLogBatch,
    Transition,
)

S = SlotState
MAX_EXCLUDED = 50
"""Machines a slot remembers itself (its pool keeps the pool-wide list)."""
COLLECTING = (S.PROVISIONING, S.PROBING, S.VALIDATING_PORTS, S.INSTALLING)
"""The states in which the instance's logs are followed over SSH."""


@dataclass(frozen=True)
class FailureNote:
    """A failure recorded by `record_failure`, reported to the pool with the next transition."""

    reason: FailureReason
    machine_id: int | None
    host_fault: bool
    image_failure: bool


# ---- transitions and failures ---------------------------------------------------------------


def record_transition(
    rt: SlotRuntime, state: SlotState, reason: str, *, now: datetime, keep: int
) -> None:
    """Enter `state`, keeping the last `keep` transitions."""
    rt.transitions.append(
        Transition(
            at=now,
            from_state=rt.state if rt.state_since else None,
            to_state=state,
            reason=reason[:300],
        )
    )
    del rt.transitions[:-keep]
    rt.state = state
    rt.state_since = now


def record_failure(
    rt: SlotRuntime,
    cfg: SlotConfig,
    reason: FailureReason,
    detail: str,
    *,
    exclude: bool = True,
    image_failure: bool = False,
) -> FailureNote:
    """Count a failed attempt; exclude its machine when the host caused it (`exclude`); switch
    the next attempt to the fallback image after an image failure."""
    c = rt.counters
    c.failures += 1
    c.consecutive_failures += 1
    c.failures_by_reason[reason.value] = c.failures_by_reason.get(reason.value, 0) + 1
    rt.last_failure = f"{reason.value}: {detail}"[:500]
    machine = rt.instance.machine_id if rt.instance else None
    if machine is None and rt.offer is not None:
        machine = rt.offer.machine_id
    if exclude and machine is not None and machine not in rt.excluded_machines:
        rt.excluded_machines.append(machine)
        del rt.excluded_machines[:-MAX_EXCLUDED]
    if image_failure and cfg.fallback_image:
        rt.use_fallback_image = True
    return FailureNote(
        reason=reason,
        machine_id=machine,
        host_fault=exclude and machine is not None,
        image_failure=image_failure,
    )


def image_for(rt: SlotRuntime, cfg: SlotConfig) -> str:
    """The image of the next rent: the fallback after an image failure, else the image. The
    rent consumes the choice (`use_fallback_image`) once it is settled, not when it is asked
    again under the same label."""
    if rt.use_fallback_image and cfg.fallback_image:
        return cfg.fallback_image
    return cfg.image


def with_environment_wait(cfg: SlotConfig) -> SlotConfig:
    """ComfyUI may answer only once the studio's required models are downloaded (the base
    image holds it back while provisioning runs): with an environment declared, the
    readiness wait lasts as long as the environment may take, so a long download is judged by
    `environment_timeout` (environment_incomplete) and not as ComfyUI never ready."""
    env = cfg.environment
    if env is None or not (env.nodes or env.pip or any(m.required for m in env.models)):
        return cfg
    if cfg.probe.readiness_timeout >= cfg.environment_timeout:
        return cfg
    return cfg.merged({"probe": {"readiness_timeout": cfg.environment_timeout}})


HOURS_PER_MONTH = 730.0


def stopped_dph(rt: SlotRuntime, cfg: SlotConfig) -> float | None:
    """What a stopped instance still bills per hour: its disk at the offer's storage price
    ($/GB/month), or None when the offer did not say."""
    if rt.offer is None or rt.offer.storage_cost is None:
        return None
    return round(rt.offer.storage_cost * cfg.disk_gb / HOURS_PER_MONTH, 6)


def after_terminate(rt: SlotRuntime) -> tuple[SlotState, str]:
    """Where a slot goes once its instance is destroyed (confirmed); clears what it held."""
    rt.connection_url = None
    rt.ready_since = None
    rt.needs_clean = False  # nothing left to clean
    if rt.retiring:
        return S.DONE, "instance destroyed, slot retired"
    if rt.block_after_terminate:
        rt.blocked_reason = rt.block_after_terminate
        rt.block_after_terminate = None
        return S.BLOCKED, rt.blocked_reason
    return S.BACKOFF, "instance destroyed; will rent another"


# ---- what a failed step means ----------------------------------------------------------------


class RentOutcome(StrEnum):
    """What a rent that failed means (by the provider error's type)."""

    SEARCH_AGAIN = "search_again"  # the offer vanished (or the pool excluded its machine)
    HOST_REFUSED = "host_refused"  # the create failed on that host: exclude it, back off
    REJECTED = "rejected"  # the request was refused (bad arguments): back off
    KEY_REJECTED = "key_rejected"  # systemic: block
    ASK_AGAIN = "ask_again"  # the API did not answer: the create may have landed


def rent_outcome(error_type: str | None) -> RentOutcome:
    outcomes: dict[str, RentOutcome] = {
        ErrorType.VAST_OFFER_UNAVAILABLE: RentOutcome.SEARCH_AGAIN,
        ErrorType.VAST_CREATE_FAILED: RentOutcome.HOST_REFUSED,
        ErrorType.VAST_REJECTED: RentOutcome.REJECTED,
        ErrorType.VAST_AUTH: RentOutcome.KEY_REJECTED,
    }  # a StrEnum member hashes as its string value
    return outcomes.get(error_type or "", RentOutcome.ASK_AGAIN)


@dataclass(frozen=True)
class ProbeFailure:
    """Why no endpoint of the instance can be trusted, and what follows."""

    reason: FailureReason
    detail: str
    exclude: bool = True
    block: str | None = None
    """A configuration error: BLOCKED once the instance is destroyed."""


def readiness_failure(
    error_type: str | None, detail: str, *, timed_out: bool, timeout: object
) -> ProbeFailure:
    """The readiness wait (`comfy.await_ready`) gave up."""
    if error_type == ErrorType.FIREWALL:
        return ProbeFailure(FailureReason.FIREWALL, detail)
    if error_type == ErrorType.PORTAL_UNAUTHORIZED:
        return ProbeFailure(
            FailureReason.PORTAL_UNAUTHORIZED,
            detail,
            exclude=False,
            block=f"configuration error: {detail}",
        )
    if timed_out:
        return ProbeFailure(FailureReason.COMFY_NEVER_READY, f"ComfyUI not ready within {timeout}")
    return ProbeFailure(FailureReason.COMFY_NEVER_READY, detail)


def validation_failure(report: PortReport) -> ProbeFailure | None:
    """None when a candidate passed; else why none did."""
    if report.url is not None:
        return None
    if report.firewall:
        return ProbeFailure(FailureReason.FIREWALL, "every candidate timed out")
    if report.unauthorized:
        return ProbeFailure(
            FailureReason.PORTAL_UNAUTHORIZED,
            "portal refused our token",
            exclude=False,
            block="configuration error: portal refused our token",
        )
    return ProbeFailure(FailureReason.PORTS_INVALID, "no candidate passed TCP and HTTP")


# ---- leases --------------------------------------------------------------------------------


class LeaseAnswer(StrEnum):
    RENEWED = "renewed"  # the lease this slot holds (a renewal, or a repeat)
    ENDED = "ended"  # a lease this slot held and ended
    ACCEPTED = "accepted"
    REFUSED = "refused"  # not READY, retiring, or still to clean


def assign_lease(rt: SlotRuntime, lease: Lease) -> LeaseAnswer:
    """The pool leased this slot (or renewed its lease): take it if the slot can serve it."""
    if rt.lease is not None and rt.lease.lease_id == lease.lease_id:
        rt.lease = lease
        return LeaseAnswer.RENEWED
    if rt.last_lease_end is not None and rt.last_lease_end.lease_id == lease.lease_id:
        return LeaseAnswer.ENDED
    if rt.state == S.READY and rt.lease is None and not rt.retiring and not rt.needs_clean:
        rt.lease = lease
        rt.counters.leases += 1
        return LeaseAnswer.ACCEPTED
    return LeaseAnswer.REFUSED


def end_lease(rt: SlotRuntime, reason: str, *, now: datetime) -> None:
    """End the held lease (if any), keeping how it ended for the holder and the pool."""
    lease = rt.lease
    if lease is None:
        return
    rt.last_lease_end = LeaseEnd(
        lease_id=lease.lease_id, holder=lease.holder, ended_at=now, reason=reason[:300]
    )
    rt.lease = None


def clean_pending(rt: SlotRuntime, *, cleaning: bool) -> bool:
    """A released lease's clean is running or still to run (not on a retiring slot, nor on one
    that lost its instance: those never serve again on it)."""
    serving = rt.state in (S.READY, S.LEASED) and not rt.retiring
    return cleaning or (rt.needs_clean and serving)


def lease_overdue_at(rt: SlotRuntime, cfg: SlotConfig) -> datetime | None:
    """When the held lease is overdue (its end should have come by then); None if none."""
    lease = rt.lease
    if lease is None or rt.state != S.LEASED:
        return None
    return lease.leased_until + cfg.lease_overdue_grace


# ---- provisioning logs ---------------------------------------------------------------------


def merge_log_batch(rt: SlotRuntime, batch: SshLogBatch, *, keep: int) -> None:
    """Keep a collector's batch's unseen lines (re-sent batches overlap)."""
    if rt.instance is None or batch.instance_id != rt.instance.id:
        return  # a late batch about an instance this slot no longer holds
    if rt.log_instance_id != batch.instance_id:
        rt.log_instance_id = batch.instance_id
        rt.log_positions = {}
        add_log_lines(rt, [f"--- instance {batch.instance_id} ---"], keep=keep)
    seen = rt.log_positions.get(batch.path)
    add_log_lines(rt, batch.unseen(seen), keep=keep)
    if seen is None or batch.position > seen:
        rt.log_positions[batch.path] = batch.position


def add_log_lines(rt: SlotRuntime, lines: list[str], *, keep: int) -> None:
    rt.log_tail.extend(lines)
    rt.log_lines_total += len(lines)
    del rt.log_tail[:-keep]


def collector_target(rt: SlotRuntime, cfg: SlotConfig) -> InstanceView | None:
    """The instance whose logs should be followed now, if any."""
    inst = rt.instance
    if (
        not cfg.ssh.logs
        or rt.state not in COLLECTING
        or rt.retiring
        or inst is None
        or not inst.ssh_host
        or not inst.ssh_port
        or inst.id == rt.log_failed_instance
    ):
        return None
    return inst
