"""What does each chaos scenario do to the stack, and what must hold afterwards?

1. worker-kills: SIGKILL `worker.py` at random points while slots provision (rent, boot,
   probe, destroy: instance failures keep them cycling), then one last worker.
2. server-restart: stop the dev server (SIGTERM, then SIGKILL on later rounds) while a slot
   provisions and a lease is held; start it again on the same SQLite file.
3. api-faults: 30 % of Vast.ai calls fail: 429 with Retry-After, 500/502/503/504, and answers
   slower than the client's timeout (the call is still carried out by the provider).
4. comfy-flapping: the ComfyUI of every leased slot dies and comes back, then dies for good.
5. drain: every pool of the run drains; nothing may be left billing.

Every scenario ends with the same invariant checks on its own pool, read from the simulator's
records and the slots' own answers, plus the orphan reaper's dry run (it must find nothing).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from chaos import invariants as inv
from chaos.observe import (
    PROVISIONING,
    leases_of,
    pool_status,
    reaper_orphans,
    retrying,
    serving,
    settle,
    slot_statuses,
    visible_states,
)
from chaos.profile import Profile
from chaos.report import ScenarioResult
from chaos.stack import ChaosStack, wait_until
from warmpool import leasing
from warmpool.labels import pool_workflow_id
from warmpool.models import LeaseGrant, LeaseRequest, PoolStatus, RenewRequest, SlotStatus

Scenario = Callable[[ChaosStack, Profile, random.Random], Awaitable[ScenarioResult]]
POOLS = ("chaos-kill", "chaos-srv", "chaos-api", "chaos-flap")


async def end_checks(
    stack: ChaosStack,
    pool: str,
    result: ScenarioResult,
    slots: list[SlotStatus],
    *,
    expected: int,
    leased: int = 0,
) -> None:
    """The invariants every scenario ends with, on its own pool."""
    client = await stack.client()
    mine = inv.of_pool(inv.sim_instances(await stack.sim.state()), pool)
    report = await reaper_orphans(client, pool, stack.settings.task_queue)
    result.checks += [
        inv.no_orphans(mine, slots),
        inv.no_double_rent(mine),
        inv.all_ready(slots, expected, leased),
        inv.expect(
            "reaper finds no orphan",
            not report.orphans,
            f"reaper would destroy {[d.candidate.instance_id for d in report.orphans]}",
            checked=report.listed,
        ),
    ]
    result.figures["instances rented (created)"] = str(len(mine))


async def drain_later(stack: ChaosStack, pool: str) -> None:
    """Start draining a finished scenario's pool; the drain scenario waits for it."""
    client = await stack.client()
    await retrying(lambda: client.get_workflow_handle(pool_workflow_id(pool)).signal("drain"))


async def wait_idle(stack: ChaosStack, pool: str, ready: int, within: float) -> PoolStatus:
    client = await stack.client()
    deadline = time.monotonic() + within
    while True:
        status = await pool_status(client, pool)
        if status.idle_ready >= ready:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool {pool}: {status.idle_ready} idle READY, {status.counts}")
        await asyncio.sleep(0.3)


async def acquire(stack: ChaosStack, pool: str, holder: str) -> LeaseGrant:
    client = await stack.client()
    request = LeaseRequest(holder=holder, request_id=uuid.uuid4().hex)
    return await retrying(lambda: leasing.acquire(client, pool, request), what="lease")


def fired(state: Mapping[str, Any], ids: dict[str, list[str]]) -> dict[str, int]:
    """Firings per named group of fault ids, from `/_sim/state`."""
    counts: dict[str, int] = state["faults_fired"]
    return {name: sum(counts.get(i, 0) for i in group) for name, group in ids.items()}


# ---- 1. worker kills --------------------------------------------------------------------------


async def worker_kills(stack: ChaosStack, profile: Profile, rng: random.Random) -> ScenarioResult:
    pool = "chaos-kill"
    result = ScenarioResult(
        name="worker-kills",
        title=f"kill -9 the worker at random points during provisioning, {profile.kills} times",
    )
    client = await stack.client()
    # Instance failures keep the slots cycling through rent, boot and destroy, so that the kills
    # land in provisioning; safe mode (on by default after 5 failures in a row) would stop that.
    churn = {
        "instance failures (no space, load_failed)": [
            await stack.sim.add_fault(kind="no_space", probability=0.45),
            await stack.sim.add_fault(kind="status", value="load_failed", probability=0.45),
        ]
    }
    await stack.start_pool(
        pool,
        min_ready=profile.kill_pool,
        max_slots=profile.kill_pool,
        safe_mode_after=profile.kills + 100,
    )
    during = 0
    for _ in range(profile.kills):
        if stack.worker is None or not stack.worker.alive:
            await stack.start_worker()
        await asyncio.sleep(rng.uniform(*profile.kill_delay))
        states = await visible_states(client, pool)
        during += any(s in PROVISIONING for s in states.values())
        assert stack.worker is not None
        await stack.worker.stop(signal.SIGKILL)
    state = await stack.sim.state()
    await stack.sim.clear_faults()
    result.faults = {"worker SIGKILL": profile.kills, **fired(state, churn)}
    result.figures["kills while a slot was provisioning"] = f"{during}/{profile.kills}"
    await stack.start_worker()
    slots, took = await settle(client, pool, serving(profile.kill_pool), profile.converge_s)
    result.figures["READY after the last kill"] = f"{took:.1f} s" if took is not None else "never"
    await end_checks(stack, pool, result, slots, expected=profile.kill_pool)
    await drain_later(stack, pool)
    return result


# ---- 2. server restart ------------------------------------------------------------------------


async def server_restart(stack: ChaosStack, profile: Profile, rng: random.Random) -> ScenarioResult:
    pool = "chaos-srv"
    result = ScenarioResult(
        name="server-restart",
        title=f"stop and restart the Temporal dev server (SQLite) mid-flight, {profile.restarts}x",
    )
    client = await stack.client()
    await stack.start_pool(pool, min_ready=2, max_slots=3)
    await wait_idle(stack, pool, 2, profile.converge_s)
    grant = await acquire(stack, pool, "chaos-srv-user")  # the pool now rents a third slot
    in_flight = 0
    for n in range(profile.restarts):
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        states = await visible_states(client, pool)
        in_flight += any(s in PROVISIONING for s in states.values())
        await stack.server.stop(signal.SIGTERM if n % 2 == 0 else signal.SIGKILL)
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        await stack.server.start()
    result.faults = {"dev server stop + start": profile.restarts}
    survived = stack.worker is not None and stack.worker.alive
    result.checks.append(
        inv.expect(
            "worker survived the restarts",
            survived,
            "the worker process exited while the server was down",
        )
    )
    if not survived:
        await stack.start_worker()  # as a supervisor would, so the next scenarios can run
    result.figures["restarts while a slot was provisioning"] = f"{in_flight}/{profile.restarts}"
    slots, took = await settle(client, pool, serving(3, leased=1), profile.converge_s)
    result.figures["READY after the last restart"] = (
        f"{took:.1f} s" if took is not None else "never"
    )
    status = await pool_status(client, pool)
    lease = next((x for x in leases_of(status) if x.lease_id == grant.lease_id), None)
    result.checks.append(
        inv.expect(
            "lease resumed",
            lease is not None and lease.ended_at is None,
            f"lease after the restarts: {lease}",
        )
    )
    renewed = await retrying(
        lambda: leasing.renew(
            client, pool, RenewRequest(lease_id=grant.lease_id, duration=timedelta(minutes=5))
        ),
        what="renew",
    )
    result.checks.append(
        inv.expect("lease renewable", renewed.lease_id == grant.lease_id, f"renew gave {renewed}")
    )
    await end_checks(stack, pool, result, slots, expected=3, leased=1)
    await retrying(lambda: leasing.release(client, pool, grant.lease_id), what="release")
    status = await pool_status(client, pool)
    result.checks.append(inv.leases_ended(leases_of(status), [grant.lease_id]))
    await drain_later(stack, pool)
    return result


# ---- 3. API faults ----------------------------------------------------------------------------


async def api_faults(stack: ChaosStack, profile: Profile, rng: random.Random) -> ScenarioResult:
    pool = "chaos-api"
    share = profile.api_failure
    result = ScenarioResult(
        name="api-faults",
        title=f"{share:.0%} of Vast.ai calls fail (429 + Retry-After, 5xx, timeouts)",
    )
    client = await stack.client()
    each = 1 - (1 - share) ** (1 / 3)  # three independent kinds, together `share`
    per_code = 1 - (1 - each) ** (1 / 4)
    sim = stack.sim
    timeout_s = float(stack.settings.vast_timeout_s)
    ids = {
        "429 with Retry-After": [
            await sim.add_fault(kind="rate_limit", with_retry_after=1, probability=each)
        ],
        "5xx (500/502/503/504)": [
            await sim.add_fault(kind="server_error", status_code=code, probability=per_code)
            for code in (500, 502, 503, 504)
        ],
        "timeouts (answer after the client gave up)": [
            await sim.add_fault(kind="slow", seconds=(timeout_s + 1) * sim.speed, probability=each)
        ],
    }
    before = await sim.state()
    await stack.start_pool(pool, min_ready=profile.api_pool, max_slots=profile.api_pool)
    started = time.monotonic()
    slots, took = await settle(client, pool, serving(profile.api_pool), profile.converge_s)
    after = await sim.state()
    await sim.clear_faults()
    result.faults = fired(after, ids)
    calls = sum(after["call_counts"].values()) - sum(before["call_counts"].values())
    failed = sum(result.faults.values())
    result.figures["Vast.ai calls while faulty"] = (
        f"{calls}, {failed} failed ({failed / max(calls, 1):.0%})"
    )
    result.figures["pool at size after"] = (
        f"{took:.1f} s" if took is not None else f"never ({time.monotonic() - started:.0f} s)"
    )
    await end_checks(stack, pool, result, slots, expected=profile.api_pool)
    await drain_later(stack, pool)
    return result


# ---- 4. ComfyUI flapping on leased slots -----------------------------------------------------


async def flap(stack: ChaosStack, instance_id: int, cycles: int, rng: random.Random) -> int:
    """Kill and revive one instance's ComfyUI `cycles` times, then kill it for good."""
    for _ in range(cycles):
        await stack.sim.comfy(instance_id, "kill")
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        await stack.sim.comfy(instance_id, "revive")
        await asyncio.sleep(rng.uniform(0.3, 1.0))
    await stack.sim.comfy(instance_id, "kill")
    return cycles + 1


async def comfy_flapping(stack: ChaosStack, profile: Profile, rng: random.Random) -> ScenarioResult:
    pool = "chaos-flap"
    result = ScenarioResult(name="comfy-flapping", title="ComfyUI flapping on leased slots")
    client = await stack.client()
    await stack.start_pool(pool, min_ready=2, max_slots=2)
    await wait_idle(stack, pool, 2, profile.converge_s)
    grants = [await acquire(stack, pool, f"chaos-flap-{n}") for n in range(2)]
    leased = await slot_statuses(client, pool)
    flapped = [s.instance.id for s in leased if s.instance is not None]
    kills = await asyncio.gather(*(flap(stack, i, profile.flap_cycles, rng) for i in flapped))
    result.faults = {
        "ComfyUI killed": sum(kills),
        "ComfyUI revived": sum(kills) - len(kills),
    }
    lease_ids = [g.lease_id for g in grants]

    async def leases_over() -> bool:
        status = await pool_status(client, pool)
        ended = {x.lease_id for x in leases_of(status) if x.ended_at is not None}
        return ended >= set(lease_ids)

    try:
        await wait_until(leases_over, profile.converge_s, "leases still active", step=0.3)
    except TimeoutError as exc:
        result.error = str(exc)
    slots, took = await settle(client, pool, serving(2), profile.converge_s)
    result.figures["READY again after the last kill"] = (
        f"{took:.1f} s" if took is not None else "never"
    )
    status = await pool_status(client, pool)
    result.checks.append(inv.leases_ended(leases_of(status), lease_ids))
    reasons = sorted({x.end_reason or "" for x in leases_of(status) if x.lease_id in lease_ids})
    result.figures["lease end reasons"] = "; ".join(r[:80] for r in reasons)
    gone = {i.id for i in inv.sim_instances(await stack.sim.state()) if i.destroyed}
    result.checks.append(
        inv.expect(
            "flapped instances destroyed and replaced",
            set(flapped) <= gone
            and all(s.instance is not None and s.instance.id not in flapped for s in slots),
            f"flapped {flapped}, destroyed {sorted(gone & set(flapped))}, "
            f"now {[s.instance.id if s.instance else None for s in slots]}",
            checked=len(flapped),
        )
    )
    await end_checks(stack, pool, result, slots, expected=2)
    await drain_later(stack, pool)
    return result


# ---- 5. drain everything ----------------------------------------------------------------------


async def drain_all(stack: ChaosStack, profile: Profile, rng: random.Random) -> ScenarioResult:
    result = ScenarioResult(name="drain", title="every pool of the run drains; nothing left")
    client = await stack.client()
    finished = 0
    for pool in POOLS:
        handle = client.get_workflow_handle(pool_workflow_id(pool))
        try:
            described = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                continue  # its scenario was left out of this run
            raise
        try:
            if described.status == WorkflowExecutionStatus.RUNNING:
                await drain_later(stack, pool)
            await asyncio.wait_for(handle.result(), profile.converge_s)
            finished += 1
        except Exception as exc:
            result.checks.append(inv.expect(f"pool {pool} drained", False, str(exc)[:200]))
    live = [i for i in inv.sim_instances(await stack.sim.state()) if not i.destroyed]
    result.checks.append(
        inv.expect(
            "nothing left billing",
            not live,
            f"live after the drain: {[(i.id, i.label) for i in live]}",
            checked=finished,
        )
    )
    return result


SCENARIOS: dict[str, Scenario] = {
    "worker-kills": worker_kills,
    "server-restart": server_restart,
    "api-faults": api_faults,
    "comfy-flapping": comfy_flapping,
    "drain": drain_all,
}
