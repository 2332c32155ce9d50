"""How much capacity does a pool want now, and what does it cost? Plain functions, no Temporal.

The pool asks `target` how many warm slots (READY, leased or starting) demand calls for:
`buffer` above what is in use (active leases, waiting requests, requests refused lately),
never below the floor (`min_ready`, or the floor of the scheduled period in force), never
above `max_slots`. `workflows/pool.py` turns the difference into starts, resumes, parks and
retirements through `pool_core.plan`; `account` integrates what the instances cost between two
decisions, so the figures survive continue-as-new in `PoolRuntime.costs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from warmpool.models import (
    LEASE_WAITS_KEPT,
    WEEKDAYS,
    CostView,
    FloorPeriod,
    PoolConfig,
    PoolRuntime,
    ScalingDecision,
    SlotState,
    SlotView,
)

S = SlotState
PARKED = frozenset({S.STOPPING, S.STOPPED})
"""Slots in the stopped tier: their disk bills, their GPU does not; they are not warm."""
KEEP_DECISIONS = 20
TIERS = ("idle", "leased", "starting", "stopped")


# ---- the floor and its schedule ---------------------------------------------------------------


def _active(period: FloorPeriod, local: datetime) -> bool:
    """Is `local` (in the policy's zone) inside the period? A period whose end is at or before
    its start runs past midnight, and belongs to the day it starts on."""
    day = WEEKDAYS[local.weekday()]
    now = local.time()
    if period.start < period.end:
        return day in period.days and period.start <= now < period.end
    yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
    return (day in period.days and now >= period.start) or (
        yesterday in period.days and now < period.end
    )


def floor_at(cfg: PoolConfig, now: datetime) -> tuple[int, FloorPeriod | None]:
    """The floor in force at `now` and the period that sets it (None: `min_ready`). Where
    periods overlap, the highest floor wins."""
    local = now.astimezone(ZoneInfo(cfg.scaling.timezone))
    active = [p for p in cfg.scaling.schedule if _active(p, local)]
    if not active:
        return cfg.min_ready, None
    period = max(active, key=lambda p: p.floor)
    return period.floor, period


def next_boundary(cfg: PoolConfig, now: datetime) -> datetime | None:
    """The next instant a period starts or ends (at most eight days ahead), or None without a
    schedule: the pool sets a durable timer for it so the floor moves on time."""
    if not cfg.scaling.schedule:
        return None
    zone = ZoneInfo(cfg.scaling.timezone)
    local = now.astimezone(zone)
    times = {t for p in cfg.scaling.schedule for t in (p.start, p.end)}
    candidates: list[datetime] = []
    for offset in range(9):
        day = (local + timedelta(days=offset)).date()
        for t in times:
            # fold=0 and the zone's rules: a boundary in a DST gap or fold is taken as the
            # wall clock says, which is what "08:00 Europe/Paris" means to the studio.
            at = datetime.combine(day, t, tzinfo=zone)
            if at > local:
                candidates.append(at)
    return min(candidates).astimezone(now.tzinfo) if candidates else None


def period_text(period: FloorPeriod) -> str:
    """A period as `--schedule` takes it: `mon-fri 08:00-20:00=4`."""
    indexes = [WEEKDAYS.index(day) for day in period.days]
    if len(indexes) == 7:
        days = "daily"
    elif len(indexes) > 2 and indexes == list(range(indexes[0], indexes[-1] + 1)):
        days = f"{period.days[0]}-{period.days[-1]}"
    else:
        days = ",".join(period.days)
    end = "24:00" if period.end == time(0, 0) else f"{period.end:%H:%M}"
    return f"{days} {period.start:%H:%M}-{end}={period.floor}"


def describe(period: FloorPeriod | None, cfg: PoolConfig) -> str:
    if period is None:
        return f"min_ready {cfg.min_ready}"
    return f"schedule {period_text(period)} ({cfg.scaling.timezone})"


# ---- demand and target -------------------------------------------------------------------------


def warm(rt: PoolRuntime) -> list[SlotView]:
    """Slots that serve or will serve soon: READY, leased, starting or resuming, not retiring."""
    return [v for v in rt.slots.values() if not v.retiring and v.state not in PARKED]


def parked(rt: PoolRuntime) -> list[SlotView]:
    return [v for v in rt.slots.values() if not v.retiring and v.state in PARKED]


def prune_refused(rt: PoolRuntime, cfg: PoolConfig, now: datetime) -> None:
    for request_id, at in list(rt.refused.items()):
        if now - at >= cfg.scaling.demand_window:
            del rt.refused[request_id]


@dataclass(frozen=True)
class Target:
    """Warm slots wanted now, and why, in the product's words."""

    floor: int
    demand: int
    value: int
    reason: str


def target(rt: PoolRuntime, cfg: PoolConfig, now: datetime) -> Target:
    leases = sum(1 for x in rt.leases.values() if x.ended_at is None)
    waiting_ids = {w.request.request_id for w in rt.waiting}
    waiting = len(waiting_ids)
    # A refused request asked again as a waiting one, or granted since, is one user, not two.
    refused = sum(1 for r in rt.refused if r not in waiting_ids and r not in rt.request_ids)
    demand = leases + waiting + refused
    floor, period = floor_at(cfg, now)
    wanted = demand + cfg.scaling.buffer
    parts = [f"{leases} leased"]
    if waiting:
        parts.append(f"{waiting} waiting")
    if refused:
        parts.append(f"{refused} refused lately")
    parts.append(f"buffer {cfg.scaling.buffer}")
    if wanted >= floor:
        value, reason = wanted, " + ".join(parts)
    else:
        value, reason = floor, describe(period, cfg)
    if value > cfg.max_slots:
        value, reason = cfg.max_slots, f"{reason}, capped by max_slots {cfg.max_slots}"
    return Target(floor=floor, demand=demand, value=value, reason=reason)


def decide(rt: PoolRuntime, wanted: Target, now: datetime) -> ScalingDecision | None:
    """Record a change of target (kept for the status, returned for the history)."""
    if rt.target == wanted.value:
        return None
    decision = ScalingDecision(
        at=now, before=rt.target or 0, after=wanted.value, reason=wanted.reason
    )
    rt.target = wanted.value
    record(rt, decision)
    return decision


def record(rt: PoolRuntime, decision: ScalingDecision) -> None:
    rt.decisions.append(decision)
    del rt.decisions[:-KEEP_DECISIONS]


def wake_times(rt: PoolRuntime, cfg: PoolConfig, now: datetime) -> list[datetime]:
    """When the policy's view changes by itself: a refusal stops counting, the surplus has
    lasted long enough, a scheduled period starts or ends."""
    times = [at + cfg.scaling.demand_window for at in rt.refused.values()]
    if rt.surplus_since is not None:
        times.append(rt.surplus_since + cfg.scaling.scale_down_delay)
        if cfg.scaling.stopped_target:
            times.append(rt.surplus_since + cfg.scaling.park_after)
            times += [v.since + cfg.scaling.park_after for v in warm(rt) if v.state == S.READY]
    boundary = next_boundary(cfg, now)
    if boundary is not None:
        times.append(boundary)
    return [t for t in times if t > now]


# ---- cost ------------------------------------------------------------------------------------


def tier(view: SlotView) -> str | None:
    """Which spend tier a slot bills in, or None if it holds no instance."""
    if view.instance_id is None:
        return None
    if view.state in PARKED:
        return "stopped"
    if view.lease_id is not None or view.state == S.LEASED:
        return "leased"
    if view.state == S.READY:
        return "idle"
    return "starting"


def spend_per_hour_by_tier(rt: PoolRuntime) -> dict[str, float]:
    rates = dict.fromkeys(TIERS, 0.0)
    for view in rt.slots.values():
        name = tier(view)
        if name is not None:
            rates[name] += view.dph_total or 0.0
    return {name: round(rate, 4) for name, rate in rates.items()}


def account(rt: PoolRuntime, now: datetime) -> None:
    """Add what the slots cost since the last call, at the rates they had meanwhile: call it
    before anything changes a slot's state or lease."""
    ledger = rt.costs
    if ledger.last_at is None:
        ledger.since = ledger.last_at = now
        return
    hours = (now - ledger.last_at).total_seconds() / 3600
    ledger.last_at = now
    if hours <= 0:
        return
    for view in rt.slots.values():
        name = tier(view)
        if name is None:
            continue
        dollars = (view.dph_total or 0.0) * hours
        ledger.spend_by_tier[name] = ledger.spend_by_tier.get(name, 0.0) + dollars
        if name == "idle":
            ledger.idle_gpu_seconds += hours * 3600
        elif name == "leased":
            ledger.leased_gpu_seconds += hours * 3600


def observe_wait(rt: PoolRuntime, seconds: float) -> None:
    waits = rt.costs.lease_waits
    waits.append(max(0.0, seconds))
    del waits[:-LEASE_WAITS_KEPT]


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in [0, 1]), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def cost_view(rt: PoolRuntime) -> CostView:
    ledger = rt.costs
    total = sum(ledger.spend_by_tier.values())
    leased_hours = ledger.leased_gpu_seconds / 3600
    return CostView(
        spend_per_hour_by_tier=spend_per_hour_by_tier(rt),
        spend_total=round(total, 4),
        spend_by_tier={k: round(v, 4) for k, v in ledger.spend_by_tier.items()},
        idle_gpu_hours=round(ledger.idle_gpu_seconds / 3600, 4),
        leased_gpu_hours=round(leased_hours, 4),
        dollars_per_leased_hour=round(total / leased_hours, 4) if leased_hours > 0 else None,
        lease_wait_p50_s=percentile(ledger.lease_waits, 0.5),
        lease_wait_p95_s=percentile(ledger.lease_waits, 0.95),
        refusals=ledger.refusals,
        since=ledger.since,
    )
