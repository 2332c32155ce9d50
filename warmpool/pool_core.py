"""What does a pool decide? Its rules as plain functions over `PoolRuntime`, no Temporal.

`workflows/pool.py` orchestrates (child slots, messages, timers, updates) and asks these
functions which slots are idle, whether a lease can be granted, what to start or retire, and
what a slot's event means; they run in microseconds under plain pytest and hypothesis
(`tests/warmpool/test_pool_core.py`). The market rules (exclusions, safe mode) are in
`warmpool.market`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from warmpool.models import (
    PoolConfig,
    PoolLease,
    PoolRuntime,
    PoolStats,
    SlotEvent,
    SlotState,
    SlotView,
)

S = SlotState
STARTING = frozenset(
    {S.PREFLIGHT, S.SEARCHING, S.RENTING, S.PROVISIONING, S.PROBING, S.VALIDATING_PORTS, S.BACKOFF}
)
REPLACING = STARTING | {S.BLOCKED, S.TERMINATING}
"""A slot terminating after a failure (or blocked) replaces itself: it counts as starting."""
SERVING = frozenset({S.READY, S.LEASED, S.DRAINING})
"""States in which a slot still serves its lease: a retiring slot waits for the lease to end."""
KEEP_ENDED_LEASES = 50


def idle_ready(rt: PoolRuntime) -> list[SlotView]:
    """Slots a lease can be granted on, longest idle first."""
    return sorted(
        (
            v
            for v in rt.slots.values()
            if v.state == S.READY
            and v.lease_id is None
            and not v.cleaning
            and not v.retiring
            and v.connection_url
        ),
        key=lambda v: v.since,
    )


def refusal(rt: PoolRuntime, idle: list[SlotView]) -> str | None:
    """Why no new lease can be granted now, or None."""
    if rt.draining:
        return "pool is draining"
    if rt.safe_mode:
        return f"pool in safe mode: {rt.safe_reason}"
    if not idle:
        return "no idle READY slot; a replacement is being prepared"
    return None


def spend(rt: PoolRuntime) -> float:
    """$/h of the instances the pool's slots hold."""
    return sum(v.dph_total or 0.0 for v in rt.slots.values() if v.instance_id)


def budget_limited(rt: PoolRuntime, cfg: PoolConfig, *, extra_pending: int = 0) -> bool:
    """Would one more slot at the price cap exceed the hourly budget? A slot without an
    instance yet reserves the cap."""
    if cfg.budget_dph is None:
        return False
    pending = extra_pending + sum(
        1 for v in rt.slots.values() if not v.instance_id and not v.retiring
    )
    return spend(rt) + (pending + 1) * cfg.slot.constraints.max_dph > cfg.budget_dph


def end_lease(rt: PoolRuntime, lease: PoolLease, reason: str, *, now: datetime) -> bool:
    """Mark a lease ended and its slot to be cleaned; False if it had ended already. The pool
    keeps the last KEEP_ENDED_LEASES ended leases for their holders to read."""
    if lease.ended_at is not None:
        return False
    lease.ended_at = now
    lease.end_reason = reason
    view = rt.slots.get(lease.slot)
    if view is not None and view.lease_id == lease.lease_id:
        view.lease_id = None
        view.cleaning = True
    ended = sorted((x for x in rt.leases.values() if x.ended_at), key=lambda x: x.ended_at or now)
    for old in ended[:-KEEP_ENDED_LEASES]:
        del rt.leases[old.lease_id]
    return True


@dataclass
class Plan:
    """What reconciling does now: slots to retire (index, why) and how many slots to start."""

    retire: list[tuple[int, str]] = field(default_factory=list)
    start: int = 0


def plan(rt: PoolRuntime, cfg: PoolConfig) -> Plan:
    """Retire or start slots so that `min_ready` are idle and READY within `max_slots`, the
    budget and safe mode. Shrinking retires idle READY slots first, then starting ones, the
    newest first; never a leased slot. In safe mode nothing rents: every slot that would rent
    again (starting, failed, blocked) retires."""
    views = [v for v in rt.slots.values() if not v.retiring]
    if rt.draining:
        return Plan(retire=[(v.index, "pool draining") for v in views])
    result = Plan()
    if rt.safe_mode:
        stopping = {v.index for v in views if v.state in REPLACING and v.lease_id is None}
        result.retire = [(i, "pool in safe mode") for i in sorted(stopping)]
        views = [v for v in views if v.index not in stopping]
    idle = len(idle_ready(rt))
    starting = sum(1 for v in views if v.state in REPLACING)
    excess_total = len(views) - cfg.max_slots
    excess_idle = idle + starting - cfg.min_ready
    retired: set[int] = set()
    for v in sorted(views, key=lambda v: (v.state != S.READY, -v.index)):
        if excess_total <= 0 and excess_idle <= 0:
            break
        if v.lease_id is None and (v.state == S.READY or v.state in STARTING):
            result.retire.append((v.index, "pool shrinking"))
            retired.add(v.index)
            excess_total -= 1
            excess_idle -= 1
    if rt.safe_mode:
        return result
    wanted = cfg.min_ready - (idle + starting)
    room = cfg.max_slots - (len(views) - len(retired))
    # A slot retired just now stops reserving the budget.
    freed = sum(1 for i in retired if not rt.slots[i].instance_id)
    for _ in range(max(0, min(wanted, room))):
        if budget_limited(rt, cfg, extra_pending=result.start - freed):
            break
        result.start += 1
    return result


def count(stats: PoolStats, view: SlotView, event: SlotEvent, *, late: bool = False) -> None:
    """Keep the cumulative provisioning figures (attempts, READY, time to READY, failures).

    A `late` event (older than the slot's last) counts its rental and its failure; the
    attempt's start is taken from it only while that attempt is still provisioning.
    """
    if event.state == S.RENTING and (late or view.state != S.RENTING):
        stats.provisions_started += 1
        if not late or (view.state in STARTING and view.attempt_started is None):
            view.attempt_started = event.at
    elif event.state == S.READY and view.attempt_started is not None and not late:
        stats.observe_ready((event.at - view.attempt_started).total_seconds())
        view.attempt_started = None
    if event.failure is not None and event.state != S.READY:
        stats.observe_failure(event.failure.value)
        if not late:
            view.attempt_started = None


def merge_event(rt: PoolRuntime, event: SlotEvent, *, now: datetime) -> bool:
    """Fold one slot event into the pool's mirror of its slots, ending a lease the slot lost
    or refused; True if the event carries a failure to record (`warmpool.market`).

    Events can arrive out of order (one that met the pool's continue-as-new is delivered
    later): a late one keeps its rental and failure counts but not its state, and every event
    repeats how the slot's last lease ended.
    """
    view = rt.slots.get(event.index)
    if view is None:
        return False  # a slot this pool no longer tracks
    failed = event.failure is not None and event.state != S.READY
    if event.at < view.since and event.state != S.DONE:
        count(rt.stats, view, event, late=True)
        return failed
    count(rt.stats, view, event)
    view.state = event.state
    view.since = event.at
    view.reason = event.reason
    view.connection_url = event.connection_url
    view.instance_id = event.instance_id
    view.dph_total = event.dph_total
    lease = rt.leases.get(view.lease_id) if view.lease_id else None
    if lease is not None and event.connection_url and event.state in SERVING:
        lease.connection_url = event.connection_url  # the slot re-validated a moved port
    if event.lease_refused and event.lease_id is not None and event.lease_id in rt.leases:
        end_lease(rt, rt.leases[event.lease_id], event.reason, now=now)
    elif lease is not None:
        ended = event.ended_lease
        why = ended.reason if ended and ended.lease_id == lease.lease_id else None
        if why is not None or event.state not in SERVING:
            end_lease(rt, lease, why or f"slot lost: {event.reason}", now=now)
    if event.state == S.READY:
        view.cleaning = False
    if event.state == S.DONE:
        del rt.slots[event.index]
    return failed
