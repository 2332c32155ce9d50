"""Which labelled instances are orphans? The orphan reaper's ownership rule, as pure functions.

An instance carrying a pool's label prefix is *owned* when a live slot workflow reports it
as its instance. It is reaped only when it is unowned **and** older than the grace period,
and only when ownership could be verified:

- a slot whose state could not be read (query failed, worker down) protects every instance
  its label names: the reaper never destroys what it cannot prove is unowned;
- a slot that is SEARCHING or RENTING with the attempt a label names protects that instance:
  its rent may have landed and not returned yet (the rent adopts the label on retry);
- an instance without a provider start date is kept: its age is unknown.

A stopped instance (a parked slot's, or one a slot lost track of) is a candidate like a running
one: its disk still bills, so an unowned one is reaped the same way; its `dph_total` is then
what the disk costs, and the report marks it stopped.

Everything here is deterministic, so the reaper workflow decides in workflow code and the
decision is in its history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import field_validator

from warmpool.labels import parse_label, pool_label_prefix, validate_pool_name
from warmpool.models import Model, SlotState

DEFAULT_GRACE = timedelta(minutes=15)
DEFAULT_EVERY = timedelta(minutes=10)
RENT_STATES = frozenset({SlotState.SEARCHING, SlotState.RENTING})


class ReaperInput(Model):
    """One reaper run: the pool, how old an unowned instance must be, and whether to act."""

    pool: str
    grace: timedelta = DEFAULT_GRACE
    dry_run: bool = False

    _pool = field_validator("pool")(validate_pool_name)

    @field_validator("grace")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError(f"grace must not be negative, got {value}")
        return value


class Candidate(Model):
    """A live instance carrying the pool's label prefix, as the provider lists it."""

    instance_id: int
    label: str | None
    dph_total: float | None = None
    """What it bills now, $/h (`warmpool.vast.billing_per_hour`): the disk alone if stopped."""
    started_at: datetime | None = None
    actual_status: str | None = None
    stopped: bool = False
    """Stopped (GPU freed, disk kept and billed): still billing, reaped like a running one."""


class SlotClaim(Model):
    """What one slot workflow says it holds. `live` None: it could not be read."""

    index: int
    live: bool | None
    state: SlotState | None = None
    attempt: int = 0
    instance_id: int | None = None
    detail: str = ""


class Verdict(StrEnum):
    OWNED = "owned"
    FOREIGN = "foreign"
    RENT_IN_FLIGHT = "rent_in_flight"
    UNVERIFIED = "unverified"
    IN_GRACE = "in_grace"
    AGE_UNKNOWN = "age_unknown"
    ORPHAN = "orphan"


class Decision(Model):
    candidate: Candidate
    verdict: Verdict
    reason: str


class Reaped(Model):
    instance_id: int
    label: str | None
    dph_total: float
    already_gone: bool = False


class ReapFailure(Model):
    instance_id: int
    label: str | None
    error: str


class ReaperReport(Model):
    """What one reaper run saw, kept and destroyed; `saved_per_hour` is in $/h."""

    pool: str
    checked_at: datetime
    grace: timedelta
    dry_run: bool
    listed: int
    decisions: list[Decision]
    destroyed: list[Reaped]
    failed: list[ReapFailure]
    saved_per_hour: float

    @property
    def orphans(self) -> list[Decision]:
        return [d for d in self.decisions if d.verdict == Verdict.ORPHAN]


def slots_named(candidates: Iterable[Candidate], pool: str) -> list[int]:
    """The slot indices the candidates' labels name: the slots whose word decides."""
    indices: set[int] = set()
    for c in candidates:
        label = parse_label(c.label)
        if label is not None and label.pool == pool:
            indices.add(label.slot)
    return sorted(indices)


def _decide_one(
    candidate: Candidate,
    *,
    pool: str,
    owners: dict[int, SlotClaim],
    claims: dict[int, SlotClaim],
    now: datetime,
    grace: timedelta,
) -> Decision:
    owner = owners.get(candidate.instance_id)
    if owner is not None:
        return Decision(
            candidate=candidate,
            verdict=Verdict.OWNED,
            reason=f"slot {owner.index} holds it ({owner.state})",
        )
    label = parse_label(candidate.label)
    named = claims.get(label.slot) if label is not None and label.pool == pool else None
    if named is not None and named.live is None:
        return Decision(
            candidate=candidate,
            verdict=Verdict.UNVERIFIED,
            reason=f"slot {named.index} could not be read: {named.detail}",
        )
    if (
        label is not None
        and named is not None
        and named.live
        and named.instance_id is None
        and named.state in RENT_STATES
        and named.attempt == label.attempt
    ):
        return Decision(
            candidate=candidate,
            verdict=Verdict.RENT_IN_FLIGHT,
            reason=f"slot {named.index} is renting attempt {label.attempt}",
        )
    if candidate.started_at is None:
        return Decision(
            candidate=candidate, verdict=Verdict.AGE_UNKNOWN, reason="no start date from provider"
        )
    age = now - candidate.started_at
    if age < grace:
        return Decision(
            candidate=candidate,
            verdict=Verdict.IN_GRACE,
            reason=f"unowned but only {age.total_seconds():.0f}s old (grace {grace})",
        )
    why = "no live slot holds it"
    if label is None:
        why = "label names no slot"
    elif named is None or not named.live:
        why = f"slot {label.slot} is not running"
    return Decision(candidate=candidate, verdict=Verdict.ORPHAN, reason=why)


def decide(
    candidates: Sequence[Candidate],
    claims: Sequence[SlotClaim],
    *,
    pool: str,
    now: datetime,
    grace: timedelta,
) -> list[Decision]:
    """One decision per candidate (same order); only ORPHAN may be destroyed.

    Candidates outside the pool's prefix are never orphans of this pool (defensive: the
    caller lists by prefix already).
    """
    prefix = pool_label_prefix(pool)
    owners = {c.instance_id: c for c in claims if c.live and c.instance_id is not None}
    by_index = {c.index: c for c in claims}
    decisions = []
    for candidate in candidates:
        if not (candidate.label or "").startswith(prefix):
            decisions.append(
                Decision(candidate=candidate, verdict=Verdict.FOREIGN, reason="not this pool's")
            )
            continue
        decisions.append(
            _decide_one(candidate, pool=pool, owners=owners, claims=by_index, now=now, grace=grace)
        )
    return decisions


def saved_per_hour(reaped: Iterable[Reaped]) -> float:
    """What the destroyed instances were billing, $/h (already-gone ones billed nothing)."""
    return round(sum(r.dph_total for r in reaped if not r.already_gone), 4)
