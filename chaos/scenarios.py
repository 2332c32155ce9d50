"""What does each chaos scenario do to the stack, and what must hold afterwards?

1. worker-kills: SIGKILL `worker.py` at random points while slots provision (rent, boot,
   probe, destroy: instance failures keep them cycling), then one last worker.
2. server-restart: stop the dev server (SIGTERM, then SIGKILL on later rounds) while a slot
   provisions and a lease is held; start it again on the same SQLite file.
3. api-faults: 30 % of Vast.ai calls fail: 429 with Retry-After, 500/502/503/504, and answers
   slower than the client's timeout (the call is still carried out by the provider).
4. comfy-flapping: the ComfyUI of every leased slot dies and comes back, then dies for good.
5. two-worker-failover: two workers; `kill -9` the one running the pool (and a leased slot's
   keepalive); a lease through the gateway right after (target: answered within 3 s, and a 503
   names the request id that gets the same lease); then the leased instance's ComfyUI dies, and
   the lease must end with a reason once the keepalive resumed on the surviving worker (within
   the watch's heartbeat timeout). Not in --short: it waits out that timeout (~1 minute).
6. drain: every pool of the run drains; nothing may be left billing.

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
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from chaos import invariants as inv
from chaos.observe import (
    PROVISIONING,
    QUERY_TIMEOUT,
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
from chaos.stack import ChaosStack, identity, wait_until
from warmpool.clients import pool as pool_client
from warmpool.clients import slot as slot_client
from warmpool.labels import pool_workflow_id
from warmpool.models import (
    LeaseGrant,
    LeaseRequest,
    PoolStatus,
    RenewRequest,
    SlotState,
    SlotStatus,
)
from warmpool.names import Pool
from workflows import options

Scenario = Callable[[ChaosStack, Profile, random.Random], Awaitable[ScenarioResult]]
POOLS = ("chaos-kill", "chaos-srv", "chaos-api", "chaos-flap", "chaos-failover")


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
    await retrying(lambda: pool_client.pool_handle(client, pool).signal(Pool.DRAIN))


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
    return await retrying(lambda: pool_client.acquire(client, pool, request), what="lease")


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
    await stack.start_pool(pool, min_ready=2, max_slots=3, buffer=2)
    await wait_idle(stack, pool, 2, profile.converge_s)
    grant = await acquire(stack, pool, "chaos-srv-user")  # 1 leased + 2 idle: a third slot
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
        lambda: pool_client.renew(
            client, pool, RenewRequest(lease_id=grant.lease_id, duration=timedelta(minutes=5))
        ),
        what="renew",
    )
    result.checks.append(
        inv.expect("lease renewable", renewed.lease_id == grant.lease_id, f"renew gave {renewed}")
    )
    await end_checks(stack, pool, result, slots, expected=3, leased=1)
    await retrying(lambda: pool_client.release(client, pool, grant.lease_id), what="release")
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


# ---- 5. two-worker failover ------------------------------------------------------------------

FAILOVER_LEASE_TARGET_S = 3.0
ADMIN_KEY = "chaos-admin-key"


async def sticky_worker(client: Client, pool: str) -> str | None:
    """The identity of the worker that ran the pool's last workflow task (it caches the run, so
    the pool's next task goes to that worker's sticky queue first)."""
    handle = client.get_workflow_handle(pool_workflow_id(pool))
    last = None
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_task_started_event_attributes"):
            last = event.workflow_task_started_event_attributes.identity
    return last


async def watch_worker(client: Client, slot_id: str) -> str | None:
    """The worker running the slot's current keepalive (`comfy.watch`), if one has started."""
    described = await client.get_workflow_handle(slot_id).describe()
    started = [
        a
        for a in described.raw_description.pending_activities
        if a.activity_type.name == "comfy.watch"
        and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
    ]
    if not started:
        return None
    latest = max(started, key=lambda a: a.last_started_time.ToNanoseconds())
    return latest.last_worker_identity or None


async def leased_watch(client: Client, slot_id: str, within: float = 30) -> str:
    """The worker of a just-leased slot's keepalive, once the LEASED watch runs."""
    found: list[str] = []

    async def running() -> bool:
        status = await slot_client.query_status(
            client.get_workflow_handle(slot_id), rpc_timeout=QUERY_TIMEOUT
        )
        who = await watch_worker(client, slot_id) if status.state == SlotState.LEASED else None
        if who:
            found.append(who)
        return who is not None

    await wait_until(running, within, f"no keepalive runs for leased {slot_id}", step=0.2)
    return found[-1]


async def two_worker_failover(
    stack: ChaosStack, profile: Profile, rng: random.Random
) -> ScenarioResult:
    pool = "chaos-failover"
    result = ScenarioResult(
        name="two-worker-failover",
        title="kill -9 one of two workers; lease through the gateway; kill a leased backend",
    )
    client = await stack.client()
    second = await stack.start_extra_worker()
    gateway = await stack.start_gateway([pool], ADMIN_KEY)
    assert stack.worker is not None
    workers = {identity(w): w for w in (stack.worker, second)}
    await stack.start_pool(pool, min_ready=2, max_slots=6)
    await wait_idle(stack, pool, 2, profile.converge_s)

    # The victim runs the pool; lease until a leased slot's keepalive runs on it too.
    grants: list[LeaseGrant] = []
    watched: LeaseGrant | None = None
    victim_id = None
    for n in range(4):
        await wait_idle(stack, pool, 2, profile.converge_s)
        victim_id = await retrying(lambda: sticky_worker(client, pool), what="pool history")
        grant = await acquire(stack, pool, f"chaos-failover-{n}")
        grants.append(grant)
        if await leased_watch(client, grant.slot_id) == victim_id:
            watched = grant
            break
    if watched is None:  # the pool's worker never ran a lease's keepalive: kill the keepalive's
        watched = grants[-1]
        victim_id = await leased_watch(client, watched.slot_id)
    assert victim_id is not None
    victim = workers[victim_id]
    survivor = next(w for i, w in workers.items() if i != victim_id)
    pool_on_victim = await retrying(lambda: sticky_worker(client, pool)) == victim_id
    slot = next(s for s in await slot_statuses(client, pool) if s.workflow_id == watched.slot_id)
    assert slot.instance is not None
    instance_id = slot.instance.id
    await wait_idle(stack, pool, 2, profile.converge_s)  # capacity for the lease after the kill

    victim.send(signal.SIGKILL)
    killed, killed_at = time.monotonic(), datetime.now(UTC)
    if victim is stack.worker:
        stack.worker = survivor
        stack.extra.remove(survivor)
    else:
        stack.extra.remove(victim)
    body = {"holder": "chaos-failover-gateway", "duration_s": 600}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        answer = await http.post("/api/leases", json=body)
        latency = time.monotonic() - killed
        first = answer.json()
        retried = None
        if answer.status_code == 503:
            request_id = first.get("request_id")
            result.checks.append(
                inv.expect(
                    "an unanswered lease names its request id",
                    bool(request_id),
                    f"503 without request_id: {first}",
                )
            )
            started = time.monotonic()
            answer = await http.post("/api/leases", json={**body, "request_id": request_id})
            retried = time.monotonic() - started
        gateway_lease = answer.json()
    result.faults = {"worker SIGKILL (of two)": 1}
    result.figures["killed worker ran the pool"] = "yes" if pool_on_victim else "no"
    result.figures["lease through the gateway after the kill"] = (
        f"{latency:.2f} s ({first.get('error') or 'granted'})"
        + (f", retry with its request id {retried:.2f} s" if retried is not None else "")
    )
    if "granted_at" in gateway_lease:
        granted = datetime.fromisoformat(gateway_lease["granted_at"]) - killed_at
        result.figures["  of which until the pool granted it"] = (
            f"{granted.total_seconds():.2f} s"
        )
    result.checks.append(
        inv.expect(
            f"lease after the kill answered within {FAILOVER_LEASE_TARGET_S:g} s",
            latency <= FAILOVER_LEASE_TARGET_S,
            f"{latency:.2f} s: {first}",
        )
    )
    result.checks.append(
        inv.expect(
            "a lease after the kill (at once or by its request id)",
            answer.status_code == 201,
            f"{answer.status_code}: {gateway_lease}",
        )
    )

    # The watched lease's ComfyUI dies: its keepalive (on the dead worker) must resume on the
    # surviving worker and end the lease.
    await stack.sim.comfy(instance_id, "kill")
    backend_killed = time.monotonic()
    result.faults["ComfyUI killed under a lease"] = 1
    cfg = stack.settings.slot_config()
    watch_options = options.watch(cfg)
    heartbeat = watch_options["heartbeat_timeout"].total_seconds()
    retry = watch_options["retry_policy"].initial_interval.total_seconds()
    keepalive = cfg.keepalive
    detect = keepalive.max_failures * (keepalive.interval + keepalive.timeout).total_seconds()
    bound = heartbeat + retry + detect + 10  # +10: the slot's own tasks on the dead worker

    async def lease_ended() -> bool:
        status = await pool_status(client, pool)
        lease = next((x for x in leases_of(status) if x.lease_id == watched.lease_id), None)
        return lease is not None and lease.ended_at is not None

    try:
        await wait_until(lease_ended, bound + 30, "the dead backend's lease still active", 0.2)
        noticed: float | None = time.monotonic() - backend_killed
    except TimeoutError:
        noticed = None
    result.figures["dead backend noticed (lease ended)"] = (
        f"{noticed:.1f} s after the kill of ComfyUI, "
        f"{noticed + backend_killed - killed:.1f} s after the worker's"
        if noticed is not None
        else "never"
    )
    result.figures["bound: heartbeat timeout + retry + K failures"] = (
        f"{heartbeat:.1f} + {retry:.0f} + {detect:.1f} s"
    )
    result.checks.append(
        inv.expect(
            "keepalive resumed on the surviving worker and ended the lease",
            noticed is not None and noticed + backend_killed - killed <= bound,
            f"noticed after {noticed} s, bound {bound:.1f} s after the worker's death",
        )
    )
    status = await pool_status(client, pool)
    lease = next((x for x in leases_of(status) if x.lease_id == watched.lease_id), None)
    result.figures["its end reason"] = (lease.end_reason or "")[:80] if lease else "unknown"
    result.checks.append(inv.leases_ended(leases_of(status), [watched.lease_id]))

    # Nobody holds a lease the scenario did not get an answer for.
    known = {g.lease_id for g in grants} | {gateway_lease.get("lease_id")}
    strangers = [x for x in status.active_leases if x.lease_id not in known]
    result.checks.append(
        inv.expect(
            "no lease granted to nobody",
            not strangers,
            f"active leases no caller got: {[(x.lease_id, x.request_id) for x in strangers]}",
            checked=len(status.active_leases),
        )
    )
    for lease_id in [x.lease_id for x in status.active_leases if x.lease_id in known]:
        await retrying(partial(pool_client.release, client, pool, lease_id), what="release")
    slots, took = await settle(client, pool, serving(2), profile.converge_s)
    result.figures["READY again after the releases"] = (
        f"{took:.1f} s" if took is not None else "never"
    )
    status = await pool_status(client, pool)
    result.checks.append(
        inv.expect(
            "no lease left after the releases",
            not status.active_leases,
            f"still active: {[(x.lease_id, x.holder) for x in status.active_leases]}",
        )
    )
    await end_checks(stack, pool, result, slots, expected=2)
    await stack.stop_extra(gateway)
    await drain_later(stack, pool)
    return result


# ---- 6. drain everything ----------------------------------------------------------------------


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
    "two-worker-failover": two_worker_failover,
    "drain": drain_all,
}
