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

from warmpool import scaling
from warmpool.environment import Environment
from warmpool.models import (
    LeaseRequest,
    PoolConfig,
    PoolLease,
    PoolRuntime,
    PoolStats,
    ResizeRequest,
    ScalingDecision,
    ScalingPolicy,
    ScalingView,
    SlotEvent,
    SlotState,
    SlotView,
)

S = SlotState
STARTING = frozenset(
    {
        S.PREFLIGHT,
        S.SEARCHING,
        S.RENTING,
        S.PROVISIONING,
        S.PROBING,
        S.VALIDATING_PORTS,
        S.INSTALLING,
        S.BACKOFF,
    }
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


KEEP_ENV_VERSIONS = 20


def wanted_env(request: LeaseRequest) -> str:
    parts = []
    if request.min_environment:
        parts.append(f"environment {request.min_environment} or later")
    if request.node_class:
        parts.append(f"node class {request.node_class}")
    return ", ".join(parts)


def matching(rt: PoolRuntime, idle: list[SlotView], request: LeaseRequest) -> list[SlotView]:
    """The idle slots whose environment meets the request's: a version at or after
    `min_environment` in the order versions were applied, and `node_class` declared."""
    order = {version: i for i, version in enumerate(rt.env_versions)}
    if request.min_environment and request.min_environment not in order:
        return []  # a version this pool never applied: no slot has it

    def fits(v: SlotView) -> bool:
        floor = order.get(request.min_environment or "", -1)
        if request.min_environment and order.get(v.env_version or "", -1) < floor:
            return False
        classes = rt.env_classes.get(v.env_version or "", [])
        return not request.node_class or request.node_class in classes

    return [v for v in idle if fits(v)]


def apply_environment(rt: PoolRuntime, env: Environment) -> None:
    """Remember a version as applied now (a re-applied one moves to the end: it is the
    newest), with the node classes it declares."""
    version = env.version
    if version in rt.env_versions:
        rt.env_versions.remove(version)
    rt.env_versions.append(version)
    rt.env_classes[version] = sorted({c for node in env.nodes for c in node.classes})
    for old in rt.env_versions[:-KEEP_ENV_VERSIONS]:
        rt.env_versions.remove(old)
        rt.env_classes.pop(old, None)


def slots_by_environment(rt: PoolRuntime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in rt.slots.values():
        key = v.env_version or "none"
        counts[key] = counts.get(key, 0) + 1
    return counts


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
    """What reconciling does now: slots to retire (index, why), to park and to resume, how
    many to start, and the decisions to make visible (status and history)."""

    retire: list[tuple[int, str]] = field(default_factory=list)
    start: int = 0
    park: list[int] = field(default_factory=list)
    unpark: list[int] = field(default_factory=list)
    decisions: list[ScalingDecision] = field(default_factory=list)


def shrink_order(views: list[SlotView]) -> list[SlotView]:
    """Slots the pool may give up, best first: a rental still booting (the newest first: it
    has cost least and serves nobody yet), then idle READY slots, the most expensive and then
    the newest first. Never a leased slot, nor one cleaning after its lease."""
    booting = [v for v in views if v.state in REPLACING and v.lease_id is None]
    idle = [v for v in views if v.state == S.READY and v.lease_id is None and not v.cleaning]
    booting.sort(key=lambda v: -v.index)
    idle.sort(key=lambda v: (-(v.dph_total or 0.0), -v.index))
    return booting + idle


def plan(rt: PoolRuntime, cfg: PoolConfig, now: datetime) -> Plan:
    """Bring the warm slots to the policy's target (`warmpool.scaling`) within `max_slots`,
    the budget and safe mode.

    Growing is at once: parked slots resume first, then new slots rent. Shrinking waits for
    `scale_down_delay` of surplus and gives up one slot at a time (`shrink_order`), parking
    it instead when the stopped tier has room and it has idled `park_after`. Above
    `max_slots` (a resize) slots retire at once. In safe mode nothing rents or resumes: every
    slot that would rent again (starting, failed, blocked) retires.
    """
    views = [v for v in rt.slots.values() if not v.retiring]
    if rt.draining:
        return Plan(retire=[(v.index, "pool draining") for v in views])
    result = Plan()
    if rt.safe_mode:
        stopping = {v.index for v in views if v.state in REPLACING and v.lease_id is None}
        result.retire = [(i, "pool in safe mode") for i in sorted(stopping)]
        views = [v for v in views if v.index not in stopping]
    policy = cfg.scaling
    scaling.prune_refused(rt, cfg, now)
    wanted = scaling.target(rt, cfg, now)
    decision = scaling.decide(rt, wanted, now)
    if decision is not None:
        result.decisions.append(decision)
    warm = [v for v in views if v.state not in scaling.PARKED]
    stopped = [v for v in views if v.state == S.STOPPED]
    parked = len(views) - len(warm)
    for v in sorted(stopped, key=lambda v: -v.index)[: max(0, parked - policy.stopped_target)]:
        result.retire.append((v.index, f"stopped tier above its target {policy.stopped_target}"))
        stopped.remove(v)
        parked -= 1
    surge = 0 if rt.safe_mode else _roll_out(rt, cfg, wanted.value, warm, stopped, result)
    over = len(warm) - cfg.max_slots - surge
    for v in shrink_order(warm)[: max(0, over)]:
        result.retire.append((v.index, f"above max_slots {cfg.max_slots}"))
        warm.remove(v)
    if rt.safe_mode:
        return result
    deficit = wanted.value + surge - len(warm)
    if deficit > 0:
        rt.surplus_since = None
        for v in sorted(stopped, key=lambda v: v.since)[:deficit]:
            result.unpark.append(v.index)
        deficit -= len(result.unpark)
        room = cfg.max_slots + surge - len(warm) - len(result.unpark)
        freed = sum(1 for i, _ in result.retire if not rt.slots[i].instance_id)
        for _ in range(max(0, min(deficit, room))):
            if budget_limited(rt, cfg, extra_pending=result.start - freed):
                break
            result.start += 1
    elif deficit < 0:
        rt.surplus_since = rt.surplus_since or now
        _shrink(rt, cfg, warm, parked, now, result)
    else:
        rt.surplus_since = None
    return result


def _roll_out(
    rt: PoolRuntime,
    cfg: PoolConfig,
    target: int,
    warm: list[SlotView],
    stopped: list[SlotView],
    result: Plan,
) -> int:
    """Replace slots on another environment version than the pool's, without dropping
    capacity; returns the surge (extra slots to run above the target meanwhile).

    Parked or starting slots on an old version serve nobody: they retire at once. An idle
    READY one retires only once a replacement is READY (more slots serve than the target
    asks), the longest idle first; `max_surge` replacements start at a time. A leased one is
    left alone until its lease ends; then it is idle and replaced like the others.
    """
    version = cfg.environment.version if cfg.environment else None
    for v in [v for v in stopped if v.env_version != version]:
        result.retire.append((v.index, f"environment rollout: parked on {v.env_version}"))
        stopped.remove(v)
    for v in [
        v
        for v in warm
        if v.state in REPLACING and v.lease_id is None and v.env_version != version
    ]:
        result.retire.append((v.index, f"environment rollout: starting on {v.env_version}"))
        warm.remove(v)
    old = sorted(
        (
            v
            for v in warm
            if v.state == S.READY
            and v.lease_id is None
            and not v.cleaning
            and v.env_version != version
        ),
        key=lambda v: v.since,
    )
    if not old:
        return 0
    # A slot cleaning after its lease is not serving yet: counting it would retire an old
    # slot before its replacement is READY (a release lowers the target).
    serving = sum(1 for v in warm if v.state in SERVING and not v.cleaning)
    if serving > target:
        replaced = old.pop(0)
        result.retire.append((replaced.index, f"environment rollout: replaced by {version}"))
        warm.remove(replaced)
    return min(cfg.max_surge, len(old))


def _shrink(
    rt: PoolRuntime, cfg: PoolConfig, warm: list[SlotView], parked: int, now: datetime, result: Plan
) -> None:
    """One surplus slot parked or retired, once the surplus has lasted long enough and the
    previous one is gone."""
    assert rt.surplus_since is not None
    policy = cfg.scaling
    if any(
        (v.scaled_down or v.state == S.STOPPING) and now - v.since < policy.scale_down_delay
        for v in rt.slots.values()
    ):
        return  # one at a time (a slot stuck on its way out blocks no longer than the delay)
    candidates = shrink_order(warm)
    if not candidates:
        return
    victim = candidates[0]
    lasted = now - rt.surplus_since
    idle_for = now - victim.since
    if (
        victim.state == S.READY
        and parked < policy.stopped_target
        and lasted >= policy.park_after
        and idle_for >= policy.park_after
    ):
        result.park.append(victim.index)
        why = f"slot {victim.index} parked after {idle_for.total_seconds():.0f} s idle"
    elif lasted >= policy.scale_down_delay:
        result.retire.append((victim.index, "pool scaling down"))
        victim.scaled_down = True
        why = f"slot {victim.index} retired after {lasted.total_seconds():.0f} s of surplus"
        # The next step waits a tenth of the delay more: demand that comes back meanwhile
        # finds the slots still there.
        rt.surplus_since = now - policy.scale_down_delay + policy.scale_down_delay / 10
    else:
        return
    before = len(warm)
    decision = ScalingDecision(at=now, before=before, after=before - 1, reason=why)
    scaling.record(rt, decision)
    result.decisions.append(decision)


def resized(cfg: PoolConfig, request: ResizeRequest) -> PoolConfig:
    """The config a resize asks for, validated whole; ValueError says what is impossible."""
    if request.clear_budget and request.budget_dph is not None:
        raise ValueError("a budget cannot be set and removed at once")
    update = request.config_changes()
    if request.clear_budget:
        update["budget_dph"] = None
    policy = cfg.scaling.model_dump()
    policy.update(request.scaling_changes())
    update["scaling"] = ScalingPolicy.model_validate(policy)
    new = cfg.model_copy(update=update)
    if new.min_ready > new.max_slots:
        raise ValueError(f"min_ready {new.min_ready} exceeds max_slots {new.max_slots}")
    return new


def scaling_view(rt: PoolRuntime, cfg: PoolConfig, now: datetime) -> ScalingView:
    wanted = scaling.target(rt, cfg, now)
    return ScalingView(
        floor=wanted.floor,
        demand=wanted.demand,
        target=wanted.value,
        warm=len(scaling.warm(rt)),
        stopped=len(scaling.parked(rt)),
        surplus_since=rt.surplus_since,
        decisions=list(rt.decisions),
    )


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
    view.env_version = event.env_version
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
