"""What can an operator do with a pool and its leases? `pool ...` and `lease ...` commands."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from warmpool import names
from warmpool import search_attributes as sa
from warmpool.cli.common import (
    USAGE,
    CliError,
    Parser,
    count,
    emit,
    env_version,
    environment_file,
    existing_pool,
    final_status,
    fits,
    floor_period,
    human_seconds,
    json_flag,
    no_such_pool,
    node_class,
    non_negative_seconds,
    pool_option,
    pool_run,
    positive_float,
    positive_seconds,
    refusal,
    seconds,
    start_hint,
    temporal_trouble,
    time_zone,
)
from warmpool.clients import pool as pool_client
from warmpool.environment import Environment
from warmpool.labels import pool_workflow_id
from warmpool.models import (
    FloorPeriod,
    LeaseRequest,
    PoolConfig,
    PoolInput,
    PoolLease,
    PoolStatus,
    RenewRequest,
    ResizeRequest,
    ScalingPolicy,
    SlotState,
    SlotView,
)
from warmpool.pool_core import REPLACING, SERVING, STARTING
from warmpool.scaling import PARKED, TIERS, period_text
from warmpool.settings import Settings

T = TypeVar("T")
POOL_WORKFLOW = names.Pool.WORKFLOW
ACQUIRE_TIMEOUT_S = 10.0
"""How long `lease acquire` waits for the pool's answer (the gateway's default deadline too)."""
WAIT_TIMEOUT_S = 600.0
POLICY = ScalingPolicy()
"""The scaling policy's defaults, as `pool start` uses them."""
DECISIONS_SHOWN = 5
S = SlotState
ROLLOUT_TIMEOUT_S = 3600.0
"""How long `pool set-env --wait` waits for every slot to run the new version."""
ROLLOUT_POLL_S = 1.0


async def on_pool(client: Client, pool: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()` on the pool workflow, its failures in the product's words: a pool that does not
    exist or has finished is an impossible request (2), a refused update per `refusal`."""
    try:
        return await call()
    except WorkflowUpdateFailedError as exc:
        raise refusal(exc) from None
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise temporal_trouble(exc, f"pool {pool}") from None
        run = await pool_run(client, pool)
        if run.phase == "finished":
            raise CliError(f"{run.finished_line()}: {start_hint(pool)} again", USAGE) from None
        raise no_such_pool(pool) from None


async def _pool_status(client: Client, pool: str) -> PoolStatus:
    return await on_pool(client, pool, lambda: pool_client.status(client, pool))


def budget_line(status: PoolStatus) -> str | None:
    """Why the budget stops renting: every slot without an instance yet reserves the price cap,
    and one more slot would need the cap too."""
    cfg = status.config
    if cfg.budget_dph is None:
        return None
    cap = cfg.slot.constraints.max_dph
    pending = sum(1 for v in status.slots if not v.instance_id and not v.retiring)
    reserved = pending * cap
    needed = status.spend_per_hour + reserved + cap
    line = (
        f"budget ${cfg.budget_dph:.2f}/h: spend ${status.spend_per_hour:.2f}/h + {pending} "
        f"pending slot(s) x ${cap:.2f}/h price cap reserved = "
        f"${status.spend_per_hour + reserved:.2f}/h"
    )
    if status.budget_limited:
        line += (
            f"; one more slot needs ${needed:.2f}/h, so renting waits "
            "(raise it with `pool resize --budget`, remove it with `--no-budget`, "
            "or lower the price cap WARMPOOL_MAX_DPH)"
        )
    return line


def policy_line(cfg: PoolConfig) -> str:
    """The scaling policy in the flags' words."""
    policy = cfg.scaling
    floor = f"floor min_ready {cfg.min_ready}"
    if policy.schedule:
        periods = ", ".join(period_text(p) for p in policy.schedule)
        floor += f" + schedule {periods} ({policy.timezone})"
    parked = (
        f"stopped tier {policy.stopped_target} after {human_seconds(policy.park_after)} idle"
        if policy.stopped_target
        else "no stopped tier"
    )
    return (
        f"policy: buffer {policy.buffer}, {floor}, scale down after "
        f"{human_seconds(policy.scale_down_delay)} surplus, {parked}"
    )


def _money(dollars: float) -> str:
    """Cents, or four decimals for the small sums a stopped tier bills."""
    return f"${dollars:.2f}" if dollars >= 0.1 or dollars == 0 else f"${dollars:.4f}"


def _wait(seconds: float | None) -> str:
    return "-" if seconds is None else human_seconds(seconds) if seconds else "0s"


def tiers_line(status: PoolStatus) -> str:
    """READY / STOPPED / renting counts and what each tier bills per hour now."""
    views = [v for v in status.slots if v.state != S.DONE]
    idle = sum(1 for v in views if v.state == S.READY and v.lease_id is None)
    leased = sum(1 for v in views if v.lease_id is not None or v.state == S.LEASED)
    renting = sum(1 for v in views if v.state in STARTING)
    resuming = sum(1 for v in views if v.state == S.RESUMING)
    parked = sum(1 for v in views if v.state in PARKED)
    rates = status.costs.spend_per_hour_by_tier if status.costs else {}

    def rate(tier: str) -> str:
        return f" {_money(rates[tier])}/h" if tier in rates else ""

    starting = f"renting {renting}" + (f" + resuming {resuming}" if resuming else "")
    return (
        f"tiers: READY {idle}{rate('idle')}, leased {leased}{rate('leased')}, "
        f"{starting}{rate('starting')}, STOPPED {parked}{rate('stopped')} (disk only)"
    )


def scaling_lines(status: PoolStatus) -> list[str]:
    """The policy's reading now and its last decisions, with their time (UTC)."""
    view = status.scaling
    if view is None:
        return []
    line = (
        f"scaling: floor {view.floor}, demand {view.demand}, target {view.target}, "
        f"warm {view.warm}, stopped {view.stopped}"
    )
    if view.surplus_since is not None:
        policy = status.config.scaling
        after = policy.scale_down_delay
        if view.stopped < policy.stopped_target:
            after = min(after, policy.park_after)
        due = view.surplus_since + after
        line += f"; surplus since {view.surplus_since:%H:%M:%S}, scaling down from {due:%H:%M:%S}"
    lines = [line]
    lines += [f"  {d.at:%H:%M:%S} {d.describe()}" for d in view.decisions[-DECISIONS_SHOWN:]]
    return lines


def costs_lines(status: PoolStatus) -> list[str]:
    """What idle costs: spend so far by tier, GPU-hours, $ per leased hour, waits, refusals."""
    costs = status.costs
    if costs is None:
        return []
    since = f" since {costs.since:%Y-%m-%d %H:%M} UTC" if costs.since else ""
    order = [*TIERS, *sorted(set(costs.spend_by_tier) - set(TIERS))]
    tiers = ", ".join(
        f"{tier} {_money(costs.spend_by_tier[tier])}"
        for tier in order
        if tier in costs.spend_by_tier
    )
    per_leased = (
        "-" if costs.dollars_per_leased_hour is None else _money(costs.dollars_per_leased_hour)
    )
    spent = f"{_money(costs.spend_total)} spent" + (f" ({tiers})" if tiers else "")
    return [
        f"costs{since}: {spent}",
        f"  idle {costs.idle_gpu_hours:.4g} GPU-h, leased {costs.leased_gpu_hours:.4g} GPU-h, "
        f"{per_leased} per leased hour; lease wait p50 {_wait(costs.lease_wait_p50_s)}, "
        f"p95 {_wait(costs.lease_wait_p95_s)}; {costs.refusals} lease(s) refused",
    ]


NO_ENV = "none"
"""How `slots_by_environment` counts slots renting without an environment."""


def has_environment(status: PoolStatus) -> bool:
    """Whether the pool has a target environment or a slot still runs one."""
    return status.environment_version is not None or any(v.env_version for v in status.slots)


def _on(version: str | None) -> str:
    return f"on {version}" if version and version != NO_ENV else "without an environment"


def environment_line(status: PoolStatus) -> str | None:
    """The target environment and how many slots run each version: `environment env-new:
    3 slot(s) on it; rolling out, max_surge 1: 1 on env-old`. None without any environment."""
    if not has_environment(status):
        return None
    target = status.environment_version
    by_version = dict(status.slots_by_environment)
    on_target = by_version.pop(target or NO_ENV, 0)
    head = f"environment {target}" if target else "environment none (slots rent without one)"
    line = f"{head}: {on_target} slot(s) on it"
    if by_version:
        others = ", ".join(
            f"{n} {_on(version)}" for version, n in sorted(by_version.items(), key=lambda i: -i[1])
        )
        line += f"; rolling out (max_surge {status.config.max_surge}): {others}"
    return line


def replacing(status: PoolStatus, version: str) -> list[SlotView]:
    """The pool's slots that do not run `version` and are not gone yet."""
    return [v for v in status.slots if v.state != S.DONE and v.env_version != version]


def rollout_line(status: PoolStatus, version: str) -> str:
    """Where a rollout to `version` stands: `env-new: 2 READY or leased, 1 starting; 2 left
    (2 on env-old), 1 leased: replaced after the lease ends`."""
    return f"{version}: {rollout_state(status, version)}"


def rollout_state(status: PoolStatus, version: str) -> str:
    """`rollout_line` without the version."""
    new = [v for v in status.slots if v.state != S.DONE and v.env_version == version]
    serving = sum(1 for v in new if v.state in SERVING)
    starting = sum(1 for v in new if v.state in REPLACING | {S.RESUMING})
    installing = sum(1 for v in new if v.state == S.INSTALLING)
    line = f"{serving} READY or leased, {starting} starting"
    if installing:
        line += f" ({installing} INSTALLING)"
    old = replacing(status, version)
    if not old:
        return line
    by_version: dict[str, int] = {}
    for v in old:
        by_version[_on(v.env_version)] = by_version.get(_on(v.env_version), 0) + 1
    left = ", ".join(f"{n} {where}" for where, n in by_version.items())
    leased = sum(1 for v in old if v.lease_id is not None or v.state == S.LEASED)
    line += f"; {len(old)} left ({left})"
    if leased:
        line += f", {leased} leased: replaced after the lease ends"
    return line


def rollout_done(status: PoolStatus, version: str) -> bool:
    """Every slot runs `version`: none left on another, none on it still starting."""
    if status.environment_version != version:
        return False
    return not replacing(status, version) and not any(
        v.state in REPLACING | {S.RESUMING} for v in status.slots
    )


def start_line(status: PoolStatus, env: Environment, previous: str | None) -> str:
    """What `set-env` just started: `env-new is the target of pool P: 4 slots on env-old will be
    replaced, max_surge 1`."""
    version = env.version
    old = replacing(status, version)
    head = f"{version} is the target of pool {status.pool}"
    if previous == version:
        return (
            f"{version} is already the target of pool {status.pool}: nothing to change "
            f"({rollout_state(status, version)})"
        )
    if not old:
        return f"{head}: no slot to replace; new slots rent with it"
    by_version: dict[str, int] = {}
    for v in old:
        by_version[_on(v.env_version)] = by_version.get(_on(v.env_version), 0) + 1
    which = ", ".join(f"{n} slot(s) {where}" for where, n in by_version.items())
    line = f"{head}: {which} will be replaced, max_surge {status.config.max_surge}"
    leased = sum(1 for v in old if v.lease_id is not None or v.state == S.LEASED)
    if leased:
        line += f" ({leased} leased: after the lease ends)"
    return line


def render_pool(status: PoolStatus, *, finished: str | None = None) -> str:
    head = (
        f"pool {status.pool}: min_ready {status.config.min_ready}, max_slots "
        f"{status.config.max_slots}, idle READY {status.idle_ready}, spend "
        f"${status.spend_per_hour:.2f}/h"
    )
    lines = [head]
    if finished:
        lines.append(f"FINISHED: {finished}; every slot retired, nothing is rented")
    if status.safe_mode and not finished:
        lines.append(f"SAFE MODE: {status.safe_reason} (lift with `pool resume`)")
    if status.draining and not finished:
        lines.append("draining: slots retire as their leases end (`pool resume` stops it)")
    budget = budget_line(status)
    if budget and not finished:
        lines.append(budget)
    lines.append(policy_line(status.config))
    environment = environment_line(status)
    if environment and not finished:
        lines.append(environment)
    if not finished:
        lines += scaling_lines(status)
        lines.append(tiers_line(status))
    lines += costs_lines(status)
    envs = has_environment(status)
    env_head = f"{'environment':<16} " if envs else ""
    lines.append(
        f"{'slot':>4}  {'state':<16} {'instance':>10}  {'$/h':>6}  {'lease':<36} {env_head}url"
    )
    for v in status.slots:
        env_cell = f"{v.env_version or '-':<16} " if envs else ""
        lines.append(
            f"{v.index:>4}  {v.state.value:<16} {v.instance_id or '-':>10}  "
            f"{v.dph_total or 0:>6.3f}  {v.lease_id or '-':<36} {env_cell}"
            f"{v.connection_url or '-'}"
        )
    for lease in status.active_leases:
        lines.append(
            f"lease {lease.lease_id} {lease.holder} slot {lease.slot} until "
            f"{lease.leased_until:%H:%M:%S}"
        )
    for failure in status.failures[-5:]:
        lines.append(f"failure {failure.at:%H:%M:%S} slot {failure.slot}: {failure.reason}")
    for bad in status.excluded_machines:
        lines.append(
            f"excluded machine {bad.machine_id} until {bad.until:%Y-%m-%d %H:%M} UTC: "
            f"{bad.reason} (slot {bad.slot})"
        )
    return "\n".join(lines)


def render_lease(lease: PoolLease) -> str:
    state = "active" if lease.ended_at is None else f"ended ({lease.end_reason})"
    return (
        f"lease {lease.lease_id} for {lease.holder}: {state}\n"
        f"  slot {lease.slot} {lease.connection_url}\n  until {lease.leased_until}"
    )


def check_floors(schedule: list[FloorPeriod] | None, max_slots: int | None) -> None:
    """A scheduled floor above max_slots is refused as --min-ready above it is."""
    if max_slots is None:
        return
    for period in schedule or []:
        if period.floor > max_slots:
            raise CliError(
                f"--schedule '{period_text(period)}': floor {period.floor} exceeds "
                f"--max-slots {max_slots}",
                USAGE,
            )


def check_start(args: argparse.Namespace) -> None:
    if args.min_ready > args.max_slots:
        raise CliError(f"--min-ready {args.min_ready} exceeds --max-slots {args.max_slots}", USAGE)
    check_floors(args.schedule, args.max_slots)
    args.env = environment_file(args.environment) if args.environment else None


def check_set_env(args: argparse.Namespace) -> None:
    """The file is read, validated and sized before any connection (exit 2 on a problem)."""
    args.env = environment_file(args.file)


def scaling_policy(args: argparse.Namespace) -> ScalingPolicy:
    """`pool start`'s scaling flags (their defaults are the policy's)."""
    return ScalingPolicy(
        buffer=args.buffer,
        scale_down_delay=args.scale_down_delay,
        schedule=args.schedule or [],
        timezone=args.timezone,
        stopped_target=args.stopped_target,
        park_after=args.park_after,
    )


async def cmd_start(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    config = PoolConfig(
        min_ready=args.min_ready,
        max_slots=args.max_slots,
        budget_dph=args.budget,
        safe_mode_after=args.safe_mode_after,
        exclude_for=timedelta(hours=args.exclude_hours),
        recycle_after_lease=args.recycle,
        scaling=scaling_policy(args),
        slot=settings.slot_config(),
        environment=args.env,
        max_surge=args.max_surge,
    )
    if args.env is not None:
        fits(args.env, args.environment, onstart=config.slot.onstart)
    wf_id = pool_workflow_id(args.pool)
    try:
        await client.start_workflow(
            POOL_WORKFLOW,
            PoolInput(pool=args.pool, config=config),
            id=wf_id,
            task_queue=settings.task_queue,
            search_attributes=TypedSearchAttributes([SearchAttributePair(sa.POOL_NAME, args.pool)]),
        )
    except WorkflowAlreadyStartedError:
        raise CliError(
            f"pool {args.pool} is already running: see `warmpool pool status --pool {args.pool}`, "
            "change it with `pool resize`",
            USAGE,
        ) from None
    except RPCError as exc:
        raise temporal_trouble(exc, f"cannot start pool {args.pool}") from None
    emit(
        args,
        {"workflow_id": wf_id, "started": True, "config": config.model_dump(mode="json")},
        f"started pool {args.pool} ({wf_id}): min_ready {args.min_ready}, "
        f"max_slots {args.max_slots}\n{policy_line(config)}"
        + (f"\nenvironment {args.env.version} ({args.environment})" if args.env else ""),
    )


async def cmd_status(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    run = await existing_pool(client, args.pool)
    if run.phase == "running":
        status = await _pool_status(client, args.pool)
        emit(args, {**status.model_dump(mode="json"), "finished": False}, render_pool(status))
        return
    final = await final_status(client, args.pool)
    if final is None:
        emit(args, {"pool": args.pool, "finished": True, "how": run.how}, run.finished_line())
        return
    payload = {**final.model_dump(mode="json"), "finished": True, "how": run.how}
    emit(args, payload, render_pool(final, finished=run.finished_line()))


async def cmd_wait(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    deadline = asyncio.get_running_loop().time() + args.timeout
    await existing_pool(client, args.pool)
    while True:
        status = await _pool_status(client, args.pool)
        if status.idle_ready >= args.ready:
            emit(args, status.model_dump(mode="json"), render_pool(status))
            return
        if asyncio.get_running_loop().time() > deadline:
            raise CliError(
                f"pool {args.pool}: {status.idle_ready} idle READY slot(s) after "
                f"{human_seconds(args.timeout)}, wanted {args.ready}"
            )
        await asyncio.sleep(0.5)


async def cmd_set_env(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Make the file's environment the pool's target (the `set_environment` update); the same
    version again changes nothing and says so. `--wait` follows the rollout until every slot
    runs it, printing each change; safe mode or a target changed meanwhile ends the wait (1)."""
    env: Environment = args.env
    version = env.version
    await existing_pool(client, args.pool)
    before = await _pool_status(client, args.pool)
    if before.draining:
        raise CliError(
            f"pool {args.pool} is draining: stop the drain with `pool resume`, then set-env again",
            USAGE,
        )
    fits(env, args.file, onstart=before.config.slot.onstart)
    previous = before.environment_version
    if previous == version:
        status = before
    else:
        status = await on_pool(
            client, args.pool, lambda: pool_client.set_environment(client, args.pool, env)
        )
    line = start_line(status, env, previous)
    if status.safe_mode:
        line += (
            f"\npool {args.pool} is in safe mode ({status.safe_reason}): nothing rents until "
            "`warmpool pool resume`"
        )
    payload: dict[str, Any] = {
        "pool": args.pool,
        "version": version,
        "previous": previous,
        "already_target": previous == version,
        "to_replace": len(replacing(status, version)),
        "max_surge": status.config.max_surge,
        "safe_mode": status.safe_reason if status.safe_mode else None,
    }
    if not args.wait:
        emit(args, payload, line)
        return
    if not args.json:
        print(line, flush=True)
    status, took = await _follow_rollout(client, args, version, status)
    serving = sum(1 for v in status.slots if v.state in SERVING)
    emit(
        args,
        {
            **payload,
            "done": True,
            "seconds": round(took, 1),
            "slots_by_environment": status.slots_by_environment,
        },
        f"pool {args.pool}: every slot runs {version} ({serving} READY or leased) after "
        f"{human_seconds(took) if took >= 1 else '0s'}",
    )


async def _follow_rollout(
    client: Client, args: argparse.Namespace, version: str, status: PoolStatus
) -> tuple[PoolStatus, float]:
    """Poll the pool until every slot runs `version`, printing each new state of the rollout;
    the last status and the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    shown = ""
    while True:
        if rollout_done(status, version):
            return status, loop.time() - started
        if status.environment_version != version:
            raise CliError(
                f"pool {args.pool}: the target changed to {status.environment_version} meanwhile"
            )
        if status.safe_mode:
            raise CliError(f"pool {args.pool} entered safe mode: {status.safe_reason}")
        line = rollout_state(status, version)
        if line != shown and not args.json:
            print(f"  {loop.time() - started:>5.0f}s  {line}", flush=True)
        shown = line
        if loop.time() - started > args.timeout:
            raise CliError(
                f"pool {args.pool}: not every slot runs {version} after "
                f"{human_seconds(args.timeout)}: {rollout_line(status, version)}"
            )
        await asyncio.sleep(ROLLOUT_POLL_S)
        status = await _pool_status(client, args.pool)


async def _signal(client: Client, args: argparse.Namespace, name: str, done: str) -> None:
    handle = pool_client.pool_handle(client, args.pool)
    await on_pool(client, args.pool, lambda: handle.signal(name))
    emit(args, {"pool": args.pool, "signal": name}, done)


async def cmd_prewarm(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    await _signal(
        client, args, names.Pool.PREWARM, f"pool {args.pool}: bringing it to its target now"
    )


async def cmd_drain(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Idempotent: draining a finished pool says so and succeeds."""
    run = await existing_pool(client, args.pool)
    if run.phase == "running":
        await _signal(
            client,
            args,
            names.Pool.DRAIN,
            f"pool {args.pool}: draining (slots retire as their leases end)",
        )
    else:
        emit(
            args,
            {"pool": args.pool, "finished": True, "how": run.how},
            f"{run.finished_line()}: nothing to drain",
        )
        return
    if args.wait:
        handle = pool_client.pool_handle(client, args.pool)
        try:
            final = await asyncio.wait_for(handle.result(), args.timeout)
        except TimeoutError:
            raise CliError(
                f"pool {args.pool} still draining after {human_seconds(args.timeout)}"
            ) from None
        except Exception:  # noqa: BLE001 - terminated meanwhile: say how it ended
            final = None
        run = await pool_run(client, args.pool)
        payload = final.model_dump(mode="json") if final else {"pool": args.pool}
        emit(args, payload, f"pool {args.pool} drained: nothing is rented")


async def cmd_resume(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Idempotent: a finished pool has nothing to resume, and the command says so."""
    run = await existing_pool(client, args.pool)
    if run.phase != "running":
        emit(
            args,
            {"pool": args.pool, "finished": True, "how": run.how},
            f"{run.finished_line()}: nothing to resume; {start_hint(args.pool)} again",
        )
        return
    await _signal(
        client,
        args,
        names.Pool.RESUME,
        f"pool {args.pool}: resumed (safe mode lifted, drain stopped)",
    )


def resize_request(args: argparse.Namespace) -> ResizeRequest:
    """What `pool resize` asks the pool to change (None: unchanged); the pool validates it."""
    return ResizeRequest(
        min_ready=args.min_ready,
        max_slots=args.max_slots,
        budget_dph=args.budget,
        clear_budget=args.no_budget,
        buffer=args.buffer,
        scale_down_delay=args.scale_down_delay,
        stopped_target=args.stopped_target,
        park_after=args.park_after,
        schedule=[] if args.no_schedule else args.schedule,
        timezone=args.timezone,
    )


def check_resize(args: argparse.Namespace) -> None:
    request = resize_request(args)
    if not (request.config_changes() or request.scaling_changes() or request.clear_budget):
        raise CliError(
            "pool resize: nothing to change: give --min-ready, --max-slots, --budget, "
            "--no-budget or a scaling option such as --buffer or --schedule (see --help)",
            USAGE,
        )
    if args.min_ready is not None and args.max_slots is not None:
        if args.min_ready > args.max_slots:
            raise CliError(
                f"--min-ready {args.min_ready} exceeds --max-slots {args.max_slots}", USAGE
            )
    check_floors(args.schedule, args.max_slots)


async def cmd_resize(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    request = resize_request(args)
    status = await on_pool(
        client, args.pool, lambda: pool_client.resize(client, args.pool, request)
    )
    emit(args, status.model_dump(mode="json"), render_pool(status))


async def check_duration(client: Client, pool: str, duration: timedelta | None) -> None:
    """A duration over the pool's maximum lease is refused here, in seconds and hours."""
    if duration is None:
        return
    status = await _pool_status(client, pool)
    limit = status.config.max_lease
    if duration > limit:
        raise CliError(
            f"--duration {duration.total_seconds():g} s ({human_seconds(duration)}) exceeds "
            f"pool {pool}'s maximum lease of {limit.total_seconds():g} s "
            f"({human_seconds(limit)})",
            USAGE,
        )


async def cmd_acquire(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Lease now, or within `--wait`; no answer within `--timeout` (more with `--wait`) is an
    error naming the request id to retry with, and the pool is told nobody got the answer."""
    await check_duration(client, args.pool, args.duration)
    request = LeaseRequest(
        holder=args.holder,
        duration=args.duration,
        request_id=args.request_id or uuid.uuid4().hex,
        wait_for=args.wait or timedelta(0),
        min_environment=args.min_environment,
        node_class=args.node_class,
    )
    limit = args.timeout
    if args.wait:
        limit += args.wait.total_seconds() + pool_client.WAIT_GRACE_S

    async def lease() -> Any:
        if args.wait:
            return await pool_client.acquire_waiting(client, args.pool, request)
        return await pool_client.acquire(client, args.pool, request)

    try:
        async with asyncio.timeout(limit):
            grant = await on_pool(client, args.pool, lease)
    except TimeoutError:
        await pool_client.abandon_request(
            pool_client.pool_handle(client, args.pool), request.request_id
        )
        raise CliError(
            f"no answer from pool {args.pool} within {human_seconds(limit)}; a lease may still "
            f"be granted: retry with --request-id {request.request_id}"
        ) from None
    except pool_client.LeaseNotGranted as exc:
        raise CliError(f"no lease: {exc}") from None
    emit(
        args,
        grant.model_dump(mode="json"),
        f"lease {grant.lease_id}\n  url   {grant.connection_url}\n  slot  {grant.slot_id}\n"
        f"  until {grant.leased_until}",
    )


async def cmd_renew(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    await check_duration(client, args.pool, args.duration)
    request = RenewRequest(lease_id=args.lease_id, duration=args.duration)
    grant = await on_pool(client, args.pool, lambda: pool_client.renew(client, args.pool, request))
    emit(args, grant.model_dump(mode="json"), f"lease {grant.lease_id} until {grant.leased_until}")


async def _ended_with_pool(client: Client, pool: str, lease_id: str) -> PoolLease | None:
    """The lease as a finished pool left it; None when the pool is running. Unknown: 2."""
    run = await existing_pool(client, pool)
    if run.phase == "running":
        return None
    final = await final_status(client, pool)
    leases = [*final.active_leases, *final.recent_leases] if final else []
    for lease in leases:
        if lease.lease_id == lease_id:
            return lease
    raise CliError(f"unknown lease {lease_id}: {run.finished_line()}", USAGE)


async def cmd_release(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Idempotent: an ended lease (or one that ended with its pool) is shown as it ended."""
    lease = await _ended_with_pool(client, args.pool, args.lease_id)
    if lease is None:
        lease = await on_pool(
            client, args.pool, lambda: pool_client.release(client, args.pool, args.lease_id)
        )
    emit(args, lease.model_dump(mode="json"), render_lease(lease))


async def cmd_show(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    lease = await _ended_with_pool(client, args.pool, args.lease_id)
    if lease is None:
        lease = await on_pool(
            client, args.pool, lambda: pool_client.show(client, args.pool, args.lease_id)
        )
    if lease is None:
        raise CliError(f"unknown lease {args.lease_id} in pool {args.pool}", USAGE)
    emit(args, lease.model_dump(mode="json"), render_lease(lease))


def surge(value: str) -> int:
    """`--max-surge`: 1 to 100 replacement slots at a time."""
    number = count(value)
    if not 1 <= number <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {number}")
    return number


def timeout_option(parser: argparse.ArgumentParser, default: float, what: str) -> None:
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=default,
        metavar="SECONDS",
        help=f"seconds to wait for {what} before failing with exit 1 (default {default:g})",
    )


def scaling_options(parser: argparse.ArgumentParser, *, resize: bool) -> None:
    """The scaling policy's flags, spelled and explained alike on `pool start` and `resize`
    (`start` defaults to the policy's defaults, `resize` leaves what is not given unchanged)."""

    def default(value: object) -> str:
        return "(default: unchanged)" if resize else f"(default {value})"

    parser.add_argument(
        "--buffer",
        type=count,
        default=None if resize else POLICY.buffer,
        metavar="N",
        help="idle READY slots kept above use (active leases, waiting and lately refused "
        f"requests); --min-ready 0 with --buffer 0 scales to zero {default(POLICY.buffer)}",
    )
    parser.add_argument(
        "--scale-down-delay",
        type=non_negative_seconds,
        default=None if resize else POLICY.scale_down_delay,
        metavar="SECONDS",
        help="seconds of surplus before the pool retires an idle slot, one at a time "
        f"{default(f'{POLICY.scale_down_delay.total_seconds():g}')}",
    )
    schedule = parser.add_mutually_exclusive_group() if resize else parser
    schedule.add_argument(
        "--schedule",
        type=floor_period,
        action="append",
        metavar="'DAYS HH:MM-HH:MM=FLOOR'",
        help="a weekly period with its own floor instead of --min-ready, e.g. "
        "'mon-fri 08:00-20:00=4' (DAYS: mon-fri, sat,sun, daily or *; an end before the start "
        "runs past midnight); repeat it for more periods"
        + ("; replaces the pool's schedule (default: unchanged)" if resize else " (default: none)"),
    )
    if resize:
        schedule.add_argument(
            "--no-schedule",
            action="store_true",
            help="remove the schedule: the floor is min_ready at all hours",
        )
    parser.add_argument(
        "--timezone",
        type=time_zone,
        default=None if resize else POLICY.timezone,
        metavar="ZONE",
        help=f"IANA time zone of --schedule, e.g. Europe/Paris {default(POLICY.timezone)}",
    )
    parser.add_argument(
        "--stopped-target",
        type=count,
        default=None if resize else POLICY.stopped_target,
        metavar="N",
        help="surplus slots parked instead of retired (instance stopped: disk billed, GPU not) "
        f"and resumed before any new rental; 0: no stopped tier {default(POLICY.stopped_target)}",
    )
    parser.add_argument(
        "--park-after",
        type=non_negative_seconds,
        default=None if resize else POLICY.park_after,
        metavar="SECONDS",
        help="seconds a surplus slot stays idle before it is parked "
        f"{default(f'{POLICY.park_after.total_seconds():g}')}",
    )


def register(groups: argparse._SubParsersAction[Parser]) -> None:
    pool = groups.add_parser(
        "pool",
        help="start, watch, resize, set the environment of, drain and resume a pool",
        description="A pool keeps --buffer idle READY slots above use, at least min_ready (or a "
        "scheduled floor) warm and never more than max_slots; surplus goes after a delay, "
        "parked first when it has a stopped tier.",
    )
    cmds = pool.add_subparsers(dest="command", required=True, parser_class=Parser)

    def sub(name: str, help: str, group: Any = cmds) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help, description=help)
        pool_option(p)
        json_flag(p)
        return p

    start = sub("start", "start a pool workflow")
    start.add_argument(
        "--min-ready",
        type=count,
        default=2,
        metavar="N",
        help="floor: slots kept warm (READY, leased or starting) whatever the demand "
        "(default %(default)s)",
    )
    start.add_argument(
        "--max-slots",
        type=count,
        default=4,
        metavar="N",
        help="slots in all, leased or not (default %(default)s)",
    )
    start.add_argument(
        "--budget",
        type=positive_float,
        metavar="USD_PER_HOUR",
        help="hourly cap on the pool's spend in $/h; a slot still renting reserves the price "
        "cap WARMPOOL_MAX_DPH (default: no budget)",
    )
    start.add_argument(
        "--safe-mode-after",
        type=count,
        default=PoolConfig.model_fields["safe_mode_after"].default,
        metavar="N",
        help="distinct machines on which one image fails the same way, or one required node "
        "or model of the environment stays missing, before safe mode (default %(default)s; a "
        "rejected key or portal token trips it at once)",
    )
    start.add_argument(
        "--exclude-hours",
        type=positive_float,
        default=PoolConfig.model_fields["exclude_for"].default / timedelta(hours=1),
        metavar="HOURS",
        help="hours a machine that caused a failure stays excluded for every slot "
        "(default %(default)s)",
    )
    start.add_argument(
        "--recycle",
        action="store_true",
        help="replace a slot's instance after each lease instead of cleaning it (default: off)",
    )
    start.add_argument(
        "--environment",
        metavar="FILE",
        help="the studio's environment (custom nodes, models, image; .yaml or .json, see "
        "docs/environment.md) every slot installs before READY (default: none, only the image)",
    )
    start.add_argument(
        "--max-surge",
        type=surge,
        default=PoolConfig.model_fields["max_surge"].default,
        metavar="N",
        help="replacement slots a later `pool set-env` rollout runs above the target at once, "
        "each READY before the slot it replaces retires (default %(default)s)",
    )
    scaling_options(start, resize=False)
    start.set_defaults(func=cmd_start, check=check_start)
    sub(
        "status",
        "show the pool: slots, leases, scaling, spend and what idle costs, budget, failures",
    ).set_defaults(func=cmd_status)
    wait = sub("wait", "wait until N slots are idle and READY")
    wait.add_argument(
        "--ready",
        type=count,
        default=1,
        metavar="N",
        help="idle READY slots to wait for (default %(default)s)",
    )
    timeout_option(wait, WAIT_TIMEOUT_S, "them")
    wait.set_defaults(func=cmd_wait)
    sub("prewarm", "bring the pool to its target now").set_defaults(func=cmd_prewarm)
    set_env = sub(
        "set-env",
        "make an environment file the pool's target: slots on another version are replaced a "
        "few at a time, leased ones after their lease; applying the previous file rolls back",
    )
    set_env.add_argument(
        "--file",
        required=True,
        metavar="FILE",
        help="the environment: custom nodes, pip packages, models, image (.yaml, .yml or "
        ".json; docs/environment.md) (required)",
    )
    set_env.add_argument(
        "--wait",
        action="store_true",
        help="wait until every slot runs this version, printing the rollout's progress "
        "(default: return once it is the target)",
    )
    timeout_option(set_env, ROLLOUT_TIMEOUT_S, "every slot to run it with --wait")
    set_env.set_defaults(func=cmd_set_env, check=check_set_env)
    resize = sub(
        "resize", "change min_ready, max_slots, the budget or the scaling policy of a running pool"
    )
    resize.add_argument(
        "--min-ready", type=count, metavar="N", help="new floor, min_ready (default: unchanged)"
    )
    resize.add_argument(
        "--max-slots", type=count, metavar="N", help="new max_slots (default: unchanged)"
    )
    budget = resize.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget",
        type=positive_float,
        metavar="USD_PER_HOUR",
        help="new hourly budget in $/h (default: unchanged)",
    )
    budget.add_argument("--no-budget", action="store_true", help="remove the budget")
    scaling_options(resize, resize=True)
    resize.set_defaults(func=cmd_resize, check=check_resize)
    drain = sub("drain", "retire every slot once its lease ends; the pool then finishes")
    drain.add_argument(
        "--wait", action="store_true", help="wait until every slot is gone (default: return now)"
    )
    timeout_option(drain, WAIT_TIMEOUT_S, "the drain with --wait")
    drain.set_defaults(func=cmd_drain)
    sub("resume", "lift safe mode and stop a drain").set_defaults(func=cmd_resume)

    lease = groups.add_parser(
        "lease",
        help="acquire, renew, release and show leases on a pool",
        description="A lease gives one holder one READY instance until it ends.",
    )
    lcmds = lease.add_subparsers(dest="command", required=True, parser_class=Parser)

    def lsub(name: str, help: str) -> argparse.ArgumentParser:
        return sub(name, help, lcmds)

    acquire = lsub("acquire", "lease a READY instance")
    acquire.add_argument("--holder", required=True, help="who uses the instance (required)")
    acquire.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="SECONDS",
        help="seconds the lease lasts (default: the pool's default lease, 1 h)",
    )
    acquire.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key: the same id returns the same lease (default: random)",
    )
    acquire.add_argument(
        "--wait",
        type=positive_seconds,
        metavar="SECONDS",
        help="wait up to this many seconds for capacity (default: do not wait)",
    )
    acquire.add_argument(
        "--timeout",
        type=seconds,
        default=ACQUIRE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"seconds for the pool's answer, beyond --wait (default {ACQUIRE_TIMEOUT_S:g})",
    )
    acquire.add_argument(
        "--min-environment",
        type=env_version,
        metavar="VERSION",
        help="only a slot on this environment version (env-<12 hex>, as `pool status` shows "
        "it) or one set after it; otherwise 'no capacity with that environment' (default: any)",
    )
    acquire.add_argument(
        "--node-class",
        type=node_class,
        metavar="NAME",
        help="only a slot whose environment declares this ComfyUI node class, e.g. "
        "FaceDetailer (default: any)",
    )
    acquire.set_defaults(func=cmd_acquire)
    renew = lsub("renew", "extend a lease")
    renew.add_argument("lease_id", help="the lease's id")
    renew.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="SECONDS",
        help="seconds from now (default: the pool's default lease, 1 h)",
    )
    renew.set_defaults(func=cmd_renew)
    release = lsub("release", "end a lease (idempotent)")
    release.add_argument("lease_id", help="the lease's id")
    release.set_defaults(func=cmd_release)
    show = lsub("show", "show a lease")
    show.add_argument("lease_id", help="the lease's id")
    show.set_defaults(func=cmd_show)
