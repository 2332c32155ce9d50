"""What must hold after the chaos? The invariants of DESIGN.md as pure checks over snapshots.

Inputs are the simulator's own records (every instance ever created, destroyed ones included)
and what the slot workflows answer; nothing here trusts the pool's bookkeeping to grade itself.
Each check counts the items it looked at and lists every violation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from warmpool.labels import parse_label, pool_label_prefix
from warmpool.models import PoolLease, SlotState, SlotStatus


class Check(BaseModel):
    name: str
    checked: int
    violations: list[str] = []


class SimInstance(BaseModel):
    """The part of the simulator's `/_sim/state` instance record the checks read."""

    id: int
    label: str | None
    destroyed: bool
    dph_total: float = 0.0


def sim_instances(state: Mapping[str, Any]) -> list[SimInstance]:
    """Instances from `/_sim/state`, each priced from its offer."""
    prices = {o["id"]: o.get("dph_total") or 0.0 for o in state["offers"]}
    return [
        SimInstance(
            id=i["id"],
            label=i["label"],
            destroyed=i["destroyed"],
            dph_total=prices.get(i["offer_id"], 0.0),
        )
        for i in state["instances"]
    ]


def of_pool(instances: Iterable[SimInstance], pool: str) -> list[SimInstance]:
    prefix = pool_label_prefix(pool)
    return [i for i in instances if (i.label or "").startswith(prefix)]


def no_orphans(instances: Iterable[SimInstance], slots: Iterable[SlotStatus]) -> Check:
    """Every live instance is the instance of a running slot (one per slot)."""
    held = {s.instance.id: s.index for s in slots if s.instance is not None}
    live = [i for i in instances if not i.destroyed]
    return Check(
        name="no orphan instance",
        checked=len(live),
        violations=[
            f"instance {i.id} ({i.label}) is held by no slot" for i in live if i.id not in held
        ],
    )


def no_double_rent(instances: Iterable[SimInstance]) -> Check:
    """At most one instance ever per label (rent attempt), at most one live per slot."""
    every = list(instances)
    per_label = Counter(i.label for i in every)
    per_slot: Counter[tuple[str, int]] = Counter()
    for i in every:
        label = parse_label(i.label)
        if label is not None and not i.destroyed:
            per_slot[(label.pool, label.slot)] += 1
    violations = [
        f"{n} instances created for label {label}" for label, n in per_label.items() if n > 1
    ]
    violations += [
        f"{n} live instances for slot {slot} of pool {pool}"
        for (pool, slot), n in per_slot.items()
        if n > 1
    ]
    return Check(name="no double rent", checked=len(per_label), violations=violations)


def all_ready(slots: Iterable[SlotStatus], expected: int, leased: int = 0) -> Check:
    """Exactly `expected` running slots, each READY, or LEASED for `leased` of them."""
    every = list(slots)
    violations = [
        f"slot {s.index} is {s.state.value}: {s.last_failure or ''}".rstrip(": ")
        for s in every
        if s.state not in (SlotState.READY, SlotState.LEASED)
    ]
    leased_now = sum(1 for s in every if s.state == SlotState.LEASED)
    if leased_now != leased:
        violations.append(f"{leased_now} slots LEASED, expected {leased}")
    if len(every) != expected:
        violations.append(f"{len(every)} running slots, expected {expected}")
    return Check(name="every slot READY", checked=len(every), violations=violations)


def leases_ended(leases: Iterable[PoolLease | None], lease_ids: Iterable[str]) -> Check:
    """Every lease the scenario took ended, with a reason."""
    by_id = {lease.lease_id: lease for lease in leases if lease is not None}
    ids = list(lease_ids)
    violations = []
    for lease_id in ids:
        lease = by_id.get(lease_id)
        if lease is None:
            violations.append(f"lease {lease_id} is unknown to the pool")
        elif lease.ended_at is None or not lease.end_reason:
            violations.append(f"lease {lease_id} has not ended with a reason")
    return Check(name="every lease ended with a reason", checked=len(ids), violations=violations)


def expect(name: str, ok: bool, detail: str, checked: int = 1) -> Check:
    """A scenario-specific check: one boolean outcome with its detail when it fails."""
    return Check(name=name, checked=checked, violations=[] if ok else [detail])
