"""What does a day of lease demand cost, with a fixed pool and with the scaling policy?

Replays a synthetic, seeded day of users against three pools on one stack (dev server, the real
workers and activities, the simulator in a child process), run side by side so that they share
the same conditions (the same users at the same instants, the same machine load):

- fixed: `min_ready` = the profile's peak (6), `buffer 0` (the pool before the policy);
- policy: `min_ready 0`, `buffer 1`, a schedule floor of 2 from 08:00 to 19:00, scale down
  after 10 minutes of surplus;
- stopped: the same policy plus the stopped tier (`stopped_target 2`, `park_after` 5 minutes).

All three may grow to `max_slots` 10 (the burst goes above the peak), none has a budget.

The day: a quiet night (about 0.5 concurrent users), a morning ramp 08:00-10:00 to the peak of
6, a lunch dip to 3, an afternoon plateau of 5, an evening tail, and a burst of 4 extra users
arriving at 15:00 for 20 minutes. Six desks are busy as the profile says (`day_sessions`: a
desk's user leases, takes a 1-10 minute break, comes back; the seed fixes every arrival and
hold), so the concurrency follows the profile within a user or so; a lease is held for 8-150
minutes (lognormal, mean ~40). Each user asks as the gateway does: the
`lease` update (at once), and on "no capacity" the `request_lease` signal with `--wait`
(default 600 simulated seconds) polled through `lease_request` (`warmpool.clients.pool`). A user
not granted within the wait is a refusal. Its wait is the simulated time from its first ask to
the pool's `granted_at`; a lease granted by the first update counts its real round trip
(milliseconds: an RPC is not a simulated duration).

Time scale: one wall second is `--scale` simulated seconds (default 120: 24 h in 12 min).
Scaled: every interval and deadline of the slots (`harness.scaled_settings`: polling,
keepalive, readiness, provisioning, backoff, token checks; plus `lease_overdue_grace` and
`resume_timeout`), the pool's policy (`scale_down_delay`, `park_after`, `demand_window`),
`claim_window` and lease durations, the simulator (`SimConfig.speed` = scale, so its boot,
resume and billing run in simulated time) and the users' clock. Not scaled: single network
calls' timeouts, the pool's CLEAN_WAIT (30 s: a `lease` update waits that long at most for a
slot that is cleaning, i.e. up to an hour simulated) and the stack's own latencies: a workflow
task of 20 ms is 2.4 simulated seconds at the default scale, so short simulated waits are
floors, not measurements, and a rental reaches READY ~0.5 wall s x scale later than the
simulator alone would (the bench prints both). The simulated machine:
a fresh rental is running 5 min 30 s after its rent (20 s to create, 10 s created, 300 s of
image pull) and ComfyUI answers 40 s later; a parked one runs 30 s after its start call and
ComfyUI 40 s later (nothing pulled again).

The schedule: a pool reads its floor from the wall clock (`warmpool.scaling.floor_at`), so the
bench maps the simulated day onto it: the day starts (simulated `--start` o'clock) at wall time
t0, once every pool is warm, and the period 08:00-19:00 becomes the wall-clock period
[t0 + (08:00 - start) / scale, t0 + (19:00 - start) / scale) UTC, on every weekday (the
simulated day is a weekday; the wall run lasts minutes), set with the `resize` update at t0.

Spend: the pool's `status().costs` integrates its instances' $/h over wall time; multiplied by
the scale it is simulated dollars (the figures are differences between t0 and the end, so the
warm-up does not count). Cross-checked with the simulator's own bill (`InstanceInfo.spent`,
already in simulated dollars): the pool bills a rental at its full $/h from the rent, the
simulator bills the GPU only once the instance runs (the disk all along). The pools compete for
the same cheapest offers, and the fixed pool takes the cheapest six at warm-up, so each pool
pays different prices; "@ uniform $/h" is the simulator's bill as if every instance cost the
median price of the run's rentals (its instance-hours, priced alike), the like-for-like ratio.

The goal (issue 18): at least 40 % less spend than the fixed pool, with a lease wait p95 no
worse than `--p95-bound`, by default one fresh rental's time to READY (the median of the run's
rents): the policy rents at once for a user who waits, so one rental is what it can promise;
less than that is what the stopped tier is for. A refused user counts as an endless wait.

    .venv/bin/python bench/demand_day.py [--scale 120] [--hours 24] [--start 0] [--seed 0]
        [--variants fixed,policy,stopped] [--wait 600] [--p95-bound S] [--decisions]

    quick run: .venv/bin/python bench/demand_day.py --hours 2 --start 8 --scale 300

The workers' sandbox imports the workflow modules from disk again for every new workflow run,
so an edit of workflows/ or warmpool/ during the 12 minutes breaks slots started afterwards
(failing workflow tasks; the bench then warns that slots did not answer). To measure a commit
while the tree is being edited, run a copy of it:

    git archive HEAD | tar -x -C /tmp/snap && cp bench/*.py /tmp/snap/bench/
    cd /tmp/snap && PYTHONPATH=/tmp/snap /work/main/.venv/bin/python bench/demand_day.py
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from harness import LOOSE_OFFERS, SimProcess, print_table, run, scaled_settings, stack
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from vastsim import SimConfig
from warmpool.clients import pool as pool_client
from warmpool.clients import slot as slot_client
from warmpool.labels import pool_label_prefix, pool_workflow_id
from warmpool.models import (
    FloorPeriod,
    LeaseRequest,
    PoolConfig,
    PoolInput,
    PoolStatus,
    ResizeRequest,
    ScalingDecision,
    ScalingPolicy,
    SlotConfig,
    SlotState,
)
from warmpool.names import Pool
from warmpool.scaling import percentile
from workflows.pool import WarmPoolWorkflow

S = SlotState
DAY_S = 86_400.0

# ---- the day -------------------------------------------------------------------------------

PROFILE: tuple[tuple[float, float], ...] = (
    (0.0, 0.5),
    (7.0, 0.5),
    (8.0, 1.0),
    (10.0, 6.0),
    (12.0, 6.0),
    (12.5, 3.0),
    (13.5, 3.0),
    (14.0, 5.0),
    (17.5, 5.0),
    (20.0, 1.5),
    (22.0, 0.5),
    (24.0, 0.5),
)
"""(hour, concurrent users) points, linear in between."""
PEAK = 6
BURST_AT_H = 15.0
BURST_USERS = 4
BURST_HOLD_S = 20 * 60.0
MEAN_HOLD_S = 40 * 60.0
HOLD_SIGMA = 0.6
HOLD_RANGE_S = (8 * 60.0, 150 * 60.0)
STEP_S = 10 * 60.0
"""How often an idle desk's user may come back (see `day_sessions`)."""
WORK_START_H, WORK_END_H, WORK_FLOOR = 8.0, 19.0, 2

# ---- the pools and the simulated machine -----------------------------------------------------

MAX_SLOTS = 10
VARIANTS = ("fixed", "policy", "stopped")
OFFERS = 300
"""Offers in the simulator's catalogue: ~120 pass the bench's constraints, room for 3 pools."""
SIM_TIMES: dict[str, float] = {
    "provision_s": 20.0,
    "created_s": 10.0,
    "loading_s": 300.0,
    "comfy_boot_s": 40.0,
    "resume_s": 30.0,
}
"""Simulated seconds: a fresh rental pulls the image for 5 minutes, a resume pulls nothing."""
TRANSITIONS_KEPT = 300
"""A slot's transitions kept (30 in production): the bench reads every rent and resume."""
POLL_S = 0.1
"""Wall seconds between two `lease_request` queries of a waiting user."""
TICK_SIM_S = 300.0
"""Simulated seconds between two status reads of every pool (decisions, resumes, progress)."""


def concurrency(hour: float) -> float:
    """Concurrent users the profile asks for at `hour` (0-24)."""
    for (h0, c0), (h1, c1) in zip(PROFILE, PROFILE[1:], strict=False):
        if h0 <= hour <= h1:
            return c0 + (c1 - c0) * (hour - h0) / (h1 - h0)
    return PROFILE[-1][1]


@dataclass(frozen=True)
class Session:
    """One user's lease: when it asks (simulated seconds since midnight), for how long."""

    user: int
    arrive_s: float
    hold_s: float
    burst: bool = False


def day_sessions(seed: int) -> list[Session]:
    """The whole day's users (the same whatever window of the day is replayed).

    Desk k (1..PEAK) is busy a share `duty` = concurrency - (k - 1), clamped to [0, 1], of the
    time: its user leases for a sampled hold, takes a break of 1-10 minutes, then every
    STEP_S leases again with a chance that makes the desk's idle time hold * (1 - duty) / duty
    on average. So the concurrency follows the profile, within a user or so, rather than a
    Poisson process's swings (which put 10-14 users on a peak of 6). The burst's users arrive
    within 2 minutes of BURST_AT_H."""
    rng = random.Random(seed)
    mu = math.log(MEAN_HOLD_S) - HOLD_SIGMA**2 / 2
    ratio = MEAN_HOLD_S / STEP_S
    found: list[Session] = []
    for desk in range(PEAK):
        at = rng.uniform(0, STEP_S)
        while at < DAY_S:
            duty = min(1.0, max(0.0, concurrency(at / 3600) - desk))
            chance = duty / (ratio - (ratio - 1) * duty) if duty > 0 else 0.0
            if rng.random() >= chance:
                at += rng.uniform(0.5, 1.5) * STEP_S
                continue
            hold = min(max(rng.lognormvariate(mu, HOLD_SIGMA), HOLD_RANGE_S[0]), HOLD_RANGE_S[1])
            found.append(Session(len(found), at, hold))
            at += hold + rng.uniform(60, 600)
    for _ in range(BURST_USERS):
        arrive = BURST_AT_H * 3600 + rng.uniform(0, 120)
        found.append(Session(len(found), arrive, BURST_HOLD_S, burst=True))
    return sorted(found, key=lambda s: s.arrive_s)


# ---- the clock -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """The simulated day on the wall clock: simulated `start_s` (since midnight) is wall `t0`
    (epoch seconds); one wall second is `scale` simulated seconds."""

    t0: float
    start_s: float
    scale: float

    def wall(self, sim_s: float) -> float:
        return self.t0 + (sim_s - self.start_s) / self.scale

    def sim(self, wall: float) -> float:
        return self.start_s + (wall - self.t0) * self.scale

    def now(self) -> float:
        return self.sim(time.time())

    async def sleep_until(self, sim_s: float) -> None:
        delay = self.wall(sim_s) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)


def hhmm(sim_s: float) -> str:
    minutes = int(sim_s // 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def scaled(seconds: float, scale: float) -> timedelta:
    return timedelta(seconds=seconds / scale)


def work_hours(clock: Clock) -> FloorPeriod:
    """08:00-19:00 of the simulated day as a wall-clock period (UTC, every day)."""

    def at(hour: float) -> datetime:
        return datetime.fromtimestamp(clock.wall(hour * 3600), UTC)

    return FloorPeriod(start=at(WORK_START_H).time(), end=at(WORK_END_H).time(), floor=WORK_FLOOR)


def variant_config(name: str, scale: float, slot: SlotConfig) -> PoolConfig:
    """A pool of the variant, every duration scaled (the schedule is set at t0)."""
    policy = ScalingPolicy(
        buffer=0 if name == "fixed" else 1,
        scale_down_delay=scaled(600, scale),
        park_after=scaled(300, scale),
        demand_window=scaled(60, scale),
        stopped_target=2 if name == "stopped" else 0,
    )
    return PoolConfig(
        min_ready=PEAK if name == "fixed" else 0,
        max_slots=MAX_SLOTS,
        scaling=policy,
        claim_window=scaled(60, scale),
        max_lease=scaled(8 * 3600, scale),
        default_lease=scaled(3600, scale),
        slot=slot,
    )


# ---- the users -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one session's lease; `phase` is arriving, waiting, holding or done."""

    session: Session
    phase: str = "arriving"
    wait_s: float | None = None
    """Simulated seconds from the first ask to the grant (None: never granted)."""
    at_once: bool = False
    refused: bool = False
    error: str | None = None
    update_s: float | None = None
    """Simulated seconds until the `lease` update answered (a grant or no capacity): it waits
    for a slot that is only cleaning (CLEAN_WAIT) before it refuses."""


async def user(
    client: Client, pool: str, clock: Clock, end_s: float, wait_s: float, outcome: Outcome
) -> None:
    session = outcome.session
    await clock.sleep_until(session.arrive_s)
    scale = clock.scale
    hold_s = min(session.hold_s, end_s - session.arrive_s)
    request = LeaseRequest(
        holder=f"user-{session.user}",
        duration=min(scaled(hold_s + 3600, scale), scaled(8 * 3600, scale)),
        request_id=uuid.uuid4().hex,
        wait_for=scaled(wait_s, scale),
    )
    asked = time.time()
    outcome.phase = "waiting"
    try:
        try:
            grant = await pool_client.acquire(client, pool, request)
            outcome.wait_s = time.time() - asked
            outcome.update_s = outcome.wait_s * scale
            outcome.at_once = True
        except WorkflowUpdateFailedError:
            outcome.update_s = (time.time() - asked) * scale
            grant = await pool_client.acquire_waiting(client, pool, request, poll_s=POLL_S)
            outcome.wait_s = max(0.0, (grant.granted_at.timestamp() - asked) * scale)
    except pool_client.LeaseNotGranted:
        outcome.refused = True
        outcome.phase = "done"
        return
    except Exception as exc:  # noqa: BLE001 - a figure, not a crash: reported with the table
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.phase = "done"
        return
    outcome.phase = "holding"
    granted_sim = clock.sim(grant.granted_at.timestamp())
    await clock.sleep_until(min(granted_sim + hold_s, end_s))
    try:
        await pool_client.release(client, pool, grant.lease_id)
    except Exception as exc:  # noqa: BLE001
        outcome.error = f"release: {type(exc).__name__}: {exc}"
    outcome.phase = "done"


# ---- watching the pools ----------------------------------------------------------------------


@dataclass
class Watch:
    """One pool as the bench follows it: its decisions, slots, resumes, its last status."""

    variant: str
    pool: str
    handle: WorkflowHandle[object, PoolStatus]
    outcomes: list[Outcome] = field(default_factory=list)
    status: PoolStatus | None = None
    decisions: list[ScalingDecision] = field(default_factory=list)
    seen: set[tuple[datetime, int, int, str]] = field(default_factory=set)
    max_warm: int = 0
    max_leased: int = 0
    indices: set[int] = field(default_factory=set)
    to_ready: list[float] = field(default_factory=list)
    """Wall seconds from each rent (RENTING) to READY during the day, from the slots' histories."""
    resume_to_ready: list[float] = field(default_factory=list)
    """Wall seconds from each resume (RESUMING) to READY during the day."""
    resume_failed: int = 0
    """Resumes that ended in TERMINATING instead of READY (e.g. the GPU was taken)."""
    unreadable: int = 0
    """Slots whose status query failed at the end (e.g. a failing workflow task)."""

    async def read(self) -> PoolStatus:
        status = await pool_client.query_status(self.handle)
        self.status = status
        scaling = status.scaling
        if scaling is not None:
            self.max_warm = max(self.max_warm, scaling.warm)
            for d in scaling.decisions:
                key = (d.at, d.before, d.after, d.reason)
                if key not in self.seen:
                    self.seen.add(key)
                    self.decisions.append(d)
        self.max_leased = max(self.max_leased, len(status.active_leases))
        states = {v.index: v.state for v in status.slots}
        self.indices |= set(states)
        return status

    def progress(self) -> str:
        status = self.status
        if status is None or status.scaling is None:
            return f"{self.variant}: -"
        phases = [o.phase for o in self.outcomes]
        refused = sum(o.refused for o in self.outcomes)
        return (
            f"{self.variant}: {status.scaling.warm} warm ({len(status.active_leases)} leased,"
            f" {status.idle_ready} idle) {status.scaling.stopped} stopped, target"
            f" {status.scaling.target}, ${status.spend_per_hour:.2f}/h;"
            f" {phases.count('waiting')} waiting, {refused} refused"
        )


async def watch(watches: Sequence[Watch], clock: Clock, end_s: float) -> None:
    """Read every pool each TICK_SIM_S; a progress line on stderr every simulated hour."""
    next_hour = math.floor(clock.start_s / 3600) * 3600
    while True:
        for w in watches:
            try:
                await w.read()
            except Exception as exc:  # noqa: BLE001 - a missed read is not a failure
                print(f"status of {w.pool} failed: {exc}", file=sys.stderr)
        now = clock.now()
        if now >= next_hour:
            wall = time.time() - clock.t0
            line = " | ".join(w.progress() for w in watches)
            print(f"[{hhmm(now)} sim, {wall:5.0f} s wall] {line}", file=sys.stderr, flush=True)
            next_hour += 3600
        if now >= end_s:
            return
        await clock.sleep_until(min(now + TICK_SIM_S, end_s))


async def settled(watches: Sequence[Watch], within: float) -> None:
    """Until every pool holds its target of READY slots, none starting (the warm-up)."""
    deadline = time.monotonic() + within
    while True:
        statuses = [await w.read() for w in watches]
        if all(
            s.scaling is not None
            and s.idle_ready >= s.scaling.target
            and s.scaling.warm == s.scaling.target
            for s in statuses
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pools not warm: {[s.counts for s in statuses]}")
        await asyncio.sleep(0.2)


async def readiness(client: Client, watches: Sequence[Watch], since: datetime) -> None:
    """From every slot's transitions: how long each rent and each resume took to READY."""
    gate = asyncio.Semaphore(8)

    async def one(w: Watch, index: int) -> None:
        async with gate:
            try:
                status = await slot_client.status(client, w.pool, index)
            except Exception as exc:  # noqa: BLE001 - a slot the server no longer has
                print(f"slot {w.pool}/{index}: {exc}", file=sys.stderr)
                w.unreadable += 1
                return
        started: tuple[SlotState, datetime] | None = None
        for t in status.transitions:
            if t.to_state in (S.RENTING, S.RESUMING) and t.at >= since:
                started = (t.to_state, t.at)
            elif t.to_state == S.READY and started is not None:
                kind, at = started
                seconds = (t.at - at).total_seconds()
                (w.to_ready if kind == S.RENTING else w.resume_to_ready).append(seconds)
                started = None
            elif t.to_state in (S.TERMINATING, S.BACKOFF, S.DONE):
                if started is not None and started[0] == S.RESUMING:
                    w.resume_failed += 1
                started = None

    await asyncio.gather(*(one(w, i) for w in watches for i in sorted(w.indices)))


@dataclass(frozen=True)
class Snapshot:
    status: PoolStatus
    spent: dict[int, float]
    """Simulated dollars each of the pool's instances has billed (the simulator's account)."""


async def snapshot(watches: Sequence[Watch], sim: SimProcess) -> dict[str, Snapshot]:
    """Every pool's status and bill now. A `prewarm` first, so that each pool accounts its
    spend up to now (the ledger moves only when the pool runs)."""
    await asyncio.gather(*(w.handle.signal(Pool.PREWARM) for w in watches))
    await asyncio.sleep(0.3)
    instances = await sim.instances()
    found: dict[str, Snapshot] = {}
    for w in watches:
        prefix = pool_label_prefix(w.pool)
        spent = {i.id: i.spent for i in instances if (i.label or "").startswith(prefix)}
        found[w.variant] = Snapshot(await w.read(), spent)
    return found


# ---- the figures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    variant: str
    spend: float
    by_tier: dict[str, float]
    idle_h: float
    leased_h: float
    sim_spend: float
    uniform_spend: float
    mean_dph: float
    """What the pool paid per instance-hour (the simulator's bill over its full-rate hours)."""
    waits: list[float]
    at_once: int
    refused: int
    errors: int
    unfinished: int
    pool_p50: float | None
    pool_p95: float | None
    pool_refusals: int
    rentals: int
    parks: int
    retirements: int
    resume_failed: int
    max_warm: int
    max_leased: int
    unreadable: int
    waited: list[str]
    """Each user not granted by the first update: its arrival, the update's and the whole wait."""
    to_ready: list[float]
    resume_to_ready: list[float]

    @property
    def all_waits(self) -> list[float]:
        """Every user's wait, a refused one as endless (it never got a lease)."""
        return self.waits + [math.inf] * self.refused


def figures(
    w: Watch,
    before: Snapshot,
    after: Snapshot,
    scale: float,
    dph: dict[int, float],
    ref_dph: float,
) -> Figures:
    c0, c1 = before.status.costs, after.status.costs
    assert c0 is not None and c1 is not None
    tiers = set(c0.spend_by_tier) | set(c1.spend_by_tier)
    by_tier = {
        t: (c1.spend_by_tier.get(t, 0.0) - c0.spend_by_tier.get(t, 0.0)) * scale for t in tiers
    }
    billed = {i: s - before.spent.get(i, 0.0) for i, s in after.spent.items()}
    hours = sum(spent / dph[i] for i, spent in billed.items() if dph.get(i))
    waits = [o.wait_s for o in w.outcomes if o.wait_s is not None]
    return Figures(
        variant=w.variant,
        spend=(c1.spend_total - c0.spend_total) * scale,
        by_tier=by_tier,
        idle_h=(c1.idle_gpu_hours - c0.idle_gpu_hours) * scale,
        leased_h=(c1.leased_gpu_hours - c0.leased_gpu_hours) * scale,
        sim_spend=sum(billed.values()),
        uniform_spend=sum(s / dph[i] * ref_dph for i, s in billed.items() if dph.get(i)),
        mean_dph=sum(billed.values()) / hours if hours else 0.0,
        waits=waits,
        at_once=sum(o.at_once for o in w.outcomes),
        refused=sum(o.refused for o in w.outcomes),
        errors=sum(o.error is not None for o in w.outcomes),
        unfinished=sum(o.phase != "done" for o in w.outcomes),
        pool_p50=None if c1.lease_wait_p50_s is None else c1.lease_wait_p50_s * scale,
        pool_p95=None if c1.lease_wait_p95_s is None else c1.lease_wait_p95_s * scale,
        pool_refusals=c1.refusals - c0.refusals,
        rentals=after.status.stats.provisions_started - before.status.stats.provisions_started,
        parks=sum("parked after" in d.reason for d in w.decisions),
        retirements=sum("retired after" in d.reason for d in w.decisions),
        resume_failed=w.resume_failed,
        max_warm=w.max_warm,
        max_leased=w.max_leased,
        unreadable=w.unreadable,
        waited=[
            f"{hhmm(o.session.arrive_s)}: {fmt(o.update_s, 0)} / "
            + ("refused" if o.refused else fmt(o.wait_s, 0))
            for o in w.outcomes
            if not o.at_once and o.phase == "done"
        ],
        to_ready=[x * scale for x in w.to_ready],
        resume_to_ready=[x * scale for x in w.resume_to_ready],
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def wait(value: float | None, bound: float) -> str:
    """A wait percentile; a refused user's endless wait shows as beyond the users' bound."""
    if value is None:
        return "-"
    return f"{value:.1f}" if math.isfinite(value) else f">{bound:g}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"{value / base:.2f}"


def report(
    all_figures: list[Figures], args: argparse.Namespace, users: int, wall_s: float, ref_dph: float
) -> None:
    fixed = next((f for f in all_figures if f.variant == "fixed"), None)
    base = fixed.spend if fixed else None
    base_uniform = fixed.uniform_spend if fixed else None
    window = f"{hhmm(args.start * 3600)}-{hhmm((args.start + args.hours) * 3600 % DAY_S)}"
    print(
        f"demand day: {args.hours:g} simulated h ({window}), scale x{args.scale:g}, seed"
        f" {args.seed}, {users} users per pool, wait bound {args.wait:g} s; wall {wall_s:.0f} s"
    )
    print("spend and hours in simulated $ and h (pool ledger x scale), waits in simulated s")
    print_table(
        [
            "variant",
            "spend $",
            "vs fixed",
            "idle GPU-h",
            "leased GPU-h",
            "$/leased h",
            "wait p50",
            "wait p95",
            "refused",
            "rentals",
            "leases",
        ],
        [
            [
                f.variant,
                f"{f.spend:.2f}",
                ratio(f.spend, base),
                f"{f.idle_h:.1f}",
                f"{f.leased_h:.1f}",
                fmt(f.spend / f.leased_h if f.leased_h else None, 3),
                wait(percentile(f.all_waits, 0.5), args.wait),
                wait(percentile(f.all_waits, 0.95), args.wait),
                str(f.refused),
                str(f.rentals),
                f"{len(f.waits)} ({f.at_once} at once)",
            ]
            for f in all_figures
        ],
    )
    print()
    print(
        f"cross-checks: spend by tier (pool ledger), the simulator's bill, the bill at a uniform"
        f" ${ref_dph:.4f}/h (median price of the run's rentals)"
    )
    print_table(
        [
            "variant",
            "idle $",
            "leased $",
            "starting $",
            "stopped $",
            "simulator $",
            "@ uniform $/h",
            "vs fixed",
            "paid $/h",
            "pool p50/p95",
            "pool refusals",
            "max warm/leased",
            "parks",
            "retired",
        ],
        [
            [
                f.variant,
                *(
                    f"{f.by_tier.get(t, 0.0):.2f}"
                    for t in ("idle", "leased", "starting", "stopped")
                ),
                f"{f.sim_spend:.2f}",
                f"{f.uniform_spend:.2f}",
                ratio(f.uniform_spend, base_uniform),
                f"{f.mean_dph:.4f}",
                f"{fmt(f.pool_p50)}/{fmt(f.pool_p95)}",
                str(f.pool_refusals),
                f"{f.max_warm}/{f.max_leased}",
                str(f.parks),
                str(f.retirements),
            ]
            for f in all_figures
        ],
    )
    print()
    configured = SIM_TIMES["provision_s"] + SIM_TIMES["created_s"] + SIM_TIMES["loading_s"]
    print(
        f"time to READY, simulated s (the simulator alone: a rent runs ComfyUI after"
        f" {configured + SIM_TIMES['comfy_boot_s']:g} s, a resume after"
        f" {SIM_TIMES['resume_s'] + SIM_TIMES['comfy_boot_s']:g} s; the rest is the stack's"
        f" own wall time x{args.scale:g})"
    )
    print_table(
        ["variant", "rents", "rent → READY p50 / max", "resumes", "resume → READY p50 / max"],
        [
            [
                f.variant,
                str(len(f.to_ready)),
                spread(f.to_ready),
                str(len(f.resume_to_ready))
                + (f" ({f.resume_failed} failed)" if f.resume_failed else ""),
                spread(f.resume_to_ready),
            ]
            for f in all_figures
        ],
    )
    print()
    print("users who did not get a lease at once (arrival: update answered after / total wait, s)")
    for f in all_figures:
        print(f"  {f.variant}: {'; '.join(f.waited) or '-'}")
    for f in all_figures:
        if f.errors or f.unfinished:
            print(f"{f.variant}: {f.errors} users met an error, {f.unfinished} unfinished")
        if f.unreadable:
            print(
                f"WARNING {f.variant}: {f.unreadable} slots did not answer their status query"
                " (a failing workflow task? code edited under the run?): figures not valid"
            )
    if fixed is None:
        return
    bound = args.p95_bound
    if bound is None:
        boots = [x for f in all_figures for x in f.to_ready]
        bound = statistics.median(boots) if boots else args.wait
        why = (
            "one fresh rental's time to READY, the median of the run's rents"
            if boots
            else "--wait: no rental in the run"
        )
    else:
        why = "--p95-bound"
    print()
    print(
        f"goal (issue 18): at least 40 % less spend than fixed, lease wait p95 <= {bound:.0f}"
        f" simulated s ({why}); a refused user counts as an endless wait"
    )
    for f in all_figures:
        if f is fixed:
            continue
        cut = 1 - f.spend / fixed.spend if fixed.spend else 0.0
        cut_uniform = 1 - f.uniform_spend / fixed.uniform_spend if fixed.uniform_spend else 0.0
        p95 = percentile(f.all_waits, 0.95)
        wait_ok = p95 is not None and p95 <= bound
        print(
            f"  {f.variant}: spend {cut:.0%} less at the prices paid ({verdict(cut >= 0.4)}),"
            f" {cut_uniform:.0%} less at a uniform price ({verdict(cut_uniform >= 0.4)});"
            f" p95 {wait(p95, args.wait)} s ({verdict(wait_ok)}); {f.refused} refused"
        )


def print_decisions(watches: Sequence[Watch], clock: Clock) -> None:
    for w in watches:
        print(f"\n{w.variant} ({w.pool}): {len(w.decisions)} decisions", file=sys.stderr)
        for d in w.decisions:
            print(f"  {hhmm(clock.sim(d.at.timestamp()))} {d.describe()}", file=sys.stderr)


# ---- the run ---------------------------------------------------------------------------------


async def drain(watches: Sequence[Watch], within: float) -> None:
    """Retire every slot and wait for the pools to finish; a pool that does not is named."""
    for w in watches:
        await w.handle.signal(Pool.DRAIN)
    for w in watches:
        try:
            await asyncio.wait_for(w.handle.result(), within)
        except TimeoutError:
            status = await w.read()
            print(f"{w.pool} not drained in {within:g} s: {status.counts}", file=sys.stderr)


async def main(args: argparse.Namespace) -> None:
    scale = float(args.scale)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}: choose from {VARIANTS}")
    start_s, end_s = args.start * 3600.0, (args.start + args.hours) * 3600.0
    sessions = [s for s in day_sessions(args.seed) if start_s <= s.arrive_s < end_s]
    sim_config = SimConfig(seed=args.seed, offers=OFFERS, speed=scale, **SIM_TIMES)
    wall_started = time.monotonic()
    async with SimProcess(sim_config) as sim:
        settings = scaled_settings(scale, **LOOSE_OFFERS, lease_overdue_grace_s=300 / scale)
        async with stack(sim, settings) as bench:
            client = bench.client
            slot = bench.settings.slot_config().merged(
                {"resume_timeout": scaled(300, scale), "transitions_kept": TRANSITIONS_KEPT}
            )
            tag = uuid.uuid4().hex[:4]
            watches: list[Watch] = []
            for variant in variants:
                pool = f"day-{variant}-{tag}"
                await client.start_workflow(
                    WarmPoolWorkflow.run,
                    PoolInput(pool=pool, config=variant_config(variant, scale, slot)),
                    id=pool_workflow_id(pool),
                    task_queue=bench.queue,
                )
                watches.append(Watch(variant, pool, pool_client.pool_handle(client, pool)))
            print(f"warming up {len(watches)} pools ...", file=sys.stderr, flush=True)
            await settled(watches, within=max(120.0, 3 * 3600 / scale))
            clock = Clock(t0=time.time(), start_s=start_s, scale=scale)
            period = work_hours(clock)
            for w in watches:
                if w.variant != "fixed":
                    await pool_client.resize(client, w.pool, ResizeRequest(schedule=[period]))
            before = await snapshot(watches, sim)
            print(
                f"day starts: {len(sessions)} users per pool; schedule floor {WORK_FLOOR} from"
                f" {period.start} to {period.end} UTC (simulated {hhmm(WORK_START_H * 3600)}-"
                f"{hhmm(WORK_END_H * 3600)})",
                file=sys.stderr,
                flush=True,
            )
            tasks: list[asyncio.Task[None]] = []
            for w in watches:
                w.outcomes = [Outcome(s) for s in sessions]
                tasks += [
                    asyncio.create_task(user(client, w.pool, clock, end_s, args.wait, o))
                    for o in w.outcomes
                ]
            await watch(watches, clock, end_s)
            after = await snapshot(watches, sim)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=args.wait / scale + 10)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            wall_s = time.time() - clock.t0
            instances = await sim.instances()
            offers = {int(str(o["id"])): float(str(o["dph_total"])) for o in await sim.offers()}
            await readiness(client, watches, datetime.fromtimestamp(clock.t0, UTC))
            if args.decisions:
                print_decisions(watches, clock)
            await drain(watches, within=120.0)
            left = [i for i in await sim.instances() if not i.destroyed]
    dph = {i.id: offers[i.offer_id] for i in instances if i.offer_id in offers}
    ours = [dph[i] for s in after.values() for i in s.spent if i in dph]
    ref_dph = statistics.median(ours) if ours else 0.0
    all_figures = [
        figures(w, before[w.variant], after[w.variant], scale, dph, ref_dph) for w in watches
    ]
    report(all_figures, args, len(sessions), wall_s, ref_dph)
    print(
        f"whole run {time.monotonic() - wall_started:.0f} s wall (warm-up and drain included);"
        f" instances left undestroyed: {len(left)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=120.0, help="simulated s per wall s")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours to replay")
    parser.add_argument("--start", type=float, default=0.0, help="simulated hour to start at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--wait", type=float, default=600.0, help="a user's wait bound, sim s")
    parser.add_argument(
        "--p95-bound",
        type=float,
        default=None,
        help="goal on the lease wait p95, simulated s (default: the run's median rent → READY)",
    )
    parser.add_argument("--decisions", action="store_true", help="every scaling decision")
    run(main(parser.parse_args()))
