"""What can an operator do with a pool and its leases? `pool ...` and `lease ...` commands."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from warmpool import names
from warmpool import search_attributes as sa
from warmpool.cli.common import CliError, Parser, emit, json_flag, pool_name
from warmpool.clients import pool as pool_client
from warmpool.labels import pool_workflow_id
from warmpool.models import (
    LeaseRequest,
    PoolConfig,
    PoolInput,
    PoolLease,
    PoolStatus,
    RenewRequest,
    ResizeRequest,
)
from warmpool.settings import Settings

POOL_WORKFLOW = names.Pool.WORKFLOW
ACQUIRE_TIMEOUT_S = 10.0
"""How long `lease acquire` waits for the pool's answer (the gateway's default deadline too)."""


def positive_seconds(value: str) -> timedelta:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {value}")
    return timedelta(seconds=seconds)


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {number}")
    return number


def _explain(exc: BaseException) -> str:
    if isinstance(exc, WorkflowUpdateFailedError) and exc.cause is not None:
        return str(exc.cause)
    if isinstance(exc, RPCError):
        return exc.message
    return str(exc)


async def _pool_status(client: Client, pool: str) -> PoolStatus:
    try:
        status = await pool_client.status(client, pool)
    except RPCError as exc:
        raise CliError(f"pool {pool}: {exc.message}") from None
    return status


def render_pool(status: PoolStatus) -> str:
    head = (
        f"pool {status.pool}: min_ready {status.config.min_ready}, max_slots "
        f"{status.config.max_slots}, idle READY {status.idle_ready}, spend "
        f"${status.spend_per_hour:.2f}/h"
        + (f" (budget ${status.config.budget_dph}/h, limited)" if status.budget_limited else "")
    )
    lines = [head]
    if status.safe_mode:
        lines.append(f"SAFE MODE: {status.safe_reason} (lift with `pool resume`)")
    if status.draining:
        lines.append("draining: slots retire as their leases end")
    lines.append(f"{'slot':>4}  {'state':<16} {'instance':>10}  {'$/h':>6}  {'lease':<36} url")
    for v in status.slots:
        lines.append(
            f"{v.index:>4}  {v.state.value:<16} {v.instance_id or '-':>10}  "
            f"{v.dph_total or 0:>6.3f}  {v.lease_id or '-':<36} {v.connection_url or '-'}"
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


def check_start(args: argparse.Namespace) -> None:
    if args.min_ready > args.max_slots:
        raise CliError(f"--min-ready {args.min_ready} exceeds --max-slots {args.max_slots}", 2)


async def cmd_start(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    config = PoolConfig(
        min_ready=args.min_ready,
        max_slots=args.max_slots,
        budget_dph=args.budget,
        safe_mode_after=args.safe_mode_after,
        exclude_for=timedelta(hours=args.exclude_hours),
        recycle_after_lease=args.recycle,
        slot=settings.slot_config(),
    )
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
        raise CliError(f"{wf_id} is already running") from None
    except RPCError as exc:
        raise CliError(f"cannot start {wf_id}: {exc.message}") from None
    emit(args, {"workflow_id": wf_id, "started": True}, f"started {wf_id}")


async def cmd_status(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    status = await _pool_status(client, args.pool)
    emit(args, status.model_dump(mode="json"), render_pool(status))


async def cmd_wait(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    deadline = asyncio.get_running_loop().time() + args.timeout
    while True:
        status = await _pool_status(client, args.pool)
        if status.idle_ready >= args.ready:
            emit(args, status.model_dump(mode="json"), render_pool(status))
            return
        if asyncio.get_running_loop().time() > deadline:
            raise CliError(f"{status.idle_ready} idle READY after {args.timeout:.0f}s")
        await asyncio.sleep(0.5)


async def _signal(client: Client, args: argparse.Namespace, name: str) -> None:
    try:
        await pool_client.pool_handle(client, args.pool).signal(name)
    except RPCError as exc:
        raise CliError(f"pool {args.pool}: {exc.message}") from None
    emit(args, {"pool": args.pool, "signal": name}, f"{name} sent to pool {args.pool}")


async def cmd_prewarm(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    await _signal(client, args, names.Pool.PREWARM)


async def cmd_drain(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    await _signal(client, args, names.Pool.DRAIN)
    if args.wait:
        try:
            final = await asyncio.wait_for(
                pool_client.pool_handle(client, args.pool).result(), args.timeout
            )
        except TimeoutError:
            raise CliError(f"pool {args.pool} still draining after {args.timeout:.0f}s") from None
        emit(args, final.model_dump(mode="json"), f"pool {args.pool} drained")


async def cmd_resume(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    await _signal(client, args, names.Pool.RESUME)


async def cmd_resize(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    request = ResizeRequest(
        min_ready=args.min_ready, max_slots=args.max_slots, budget_dph=args.budget
    )
    try:
        status = await pool_client.resize(client, args.pool, request)
    except (WorkflowUpdateFailedError, RPCError) as exc:
        raise CliError(f"resize refused: {_explain(exc)}") from None
    emit(args, status.model_dump(mode="json"), render_pool(status))


async def cmd_acquire(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Lease now, or within `--wait`; no answer within `--timeout` (more with `--wait`) is an
    error naming the request id to retry with, and the pool is told nobody got the answer."""
    request = LeaseRequest(
        holder=args.holder,
        duration=args.duration,
        request_id=args.request_id or uuid.uuid4().hex,
        wait_for=args.wait or timedelta(0),
    )
    limit = args.timeout
    if args.wait:
        limit += args.wait.total_seconds() + pool_client.WAIT_GRACE_S
    try:
        async with asyncio.timeout(limit):
            if args.wait:
                grant = await pool_client.acquire_waiting(client, args.pool, request)
            else:
                grant = await pool_client.acquire(client, args.pool, request)
    except TimeoutError:
        await pool_client.abandon_request(
            pool_client.pool_handle(client, args.pool), request.request_id
        )
        raise CliError(
            f"no answer from pool {args.pool} within {limit:g}s; a lease may still be granted: "
            f"retry with --request-id {request.request_id}"
        ) from None
    except pool_client.LeaseNotGranted as exc:
        raise CliError(f"no lease: {exc}") from None
    except (WorkflowUpdateFailedError, RPCError) as exc:
        raise CliError(f"no lease: {_explain(exc)}") from None
    emit(
        args,
        grant.model_dump(mode="json"),
        f"lease {grant.lease_id}\n  url   {grant.connection_url}\n  slot  {grant.slot_id}\n"
        f"  until {grant.leased_until}",
    )


async def cmd_renew(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    try:
        grant = await pool_client.renew(
            client, args.pool, RenewRequest(lease_id=args.lease_id, duration=args.duration)
        )
    except (WorkflowUpdateFailedError, RPCError) as exc:
        raise CliError(f"renew refused: {_explain(exc)}") from None
    emit(args, grant.model_dump(mode="json"), f"lease {grant.lease_id} until {grant.leased_until}")


async def cmd_release(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    try:
        lease = await pool_client.release(client, args.pool, args.lease_id)
    except (WorkflowUpdateFailedError, RPCError) as exc:
        raise CliError(f"release refused: {_explain(exc)}") from None
    emit(args, lease.model_dump(mode="json"), render_lease(lease))


async def cmd_show(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    try:
        lease = await pool_client.show(client, args.pool, args.lease_id)
    except RPCError as exc:
        raise CliError(f"pool {args.pool}: {exc.message}") from None
    if lease is None:
        raise CliError(f"unknown lease {args.lease_id}")
    emit(args, lease.model_dump(mode="json"), render_lease(lease))


def register(groups: argparse._SubParsersAction[Parser]) -> None:
    pool = groups.add_parser("pool", help="a warm pool")
    cmds = pool.add_subparsers(dest="command", required=True, parser_class=Parser)

    def sub(name: str, help: str, group: Any = cmds) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help)
        p.add_argument("--pool", type=pool_name, default="default")
        json_flag(p)
        return p

    start = sub("start", "start a pool workflow")
    start.add_argument("--min-ready", type=count, default=2)
    start.add_argument("--max-slots", type=count, default=4)
    start.add_argument("--budget", type=positive_float, help="hourly cap on the sum of dph")
    start.add_argument(
        "--safe-mode-after",
        type=count,
        default=PoolConfig.model_fields["safe_mode_after"].default,
        help="distinct machines on which one image fails the same way before safe mode "
        "(default %(default)s; a rejected key or portal token trips it at once)",
    )
    start.add_argument(
        "--exclude-hours",
        type=positive_float,
        default=PoolConfig.model_fields["exclude_for"].default / timedelta(hours=1),
        help="hours a machine that caused a failure stays excluded for every slot "
        "(default %(default)s)",
    )
    start.add_argument("--recycle", action="store_true", help="recycle slots after a lease")
    start.set_defaults(func=cmd_start, check=check_start)
    sub("status", "show the pool").set_defaults(func=cmd_status)
    wait = sub("wait", "wait until N slots are idle and READY")
    wait.add_argument("--ready", type=count, default=1)
    wait.add_argument("--timeout", type=float, default=600.0)
    wait.set_defaults(func=cmd_wait)
    sub("prewarm", "bring the pool to its target now").set_defaults(func=cmd_prewarm)
    resize = sub("resize", "change min_ready / max_slots / budget")
    resize.add_argument("--min-ready", type=count)
    resize.add_argument("--max-slots", type=count)
    resize.add_argument("--budget", type=positive_float)
    resize.set_defaults(func=cmd_resize)
    drain = sub("drain", "retire every slot once its lease ends")
    drain.add_argument("--wait", action="store_true", help="wait until every slot is gone")
    drain.add_argument("--timeout", type=float, default=600.0)
    drain.set_defaults(func=cmd_drain)
    sub("resume", "lift safe mode or a drain").set_defaults(func=cmd_resume)

    lease = groups.add_parser("lease", help="leases of a pool")
    lcmds = lease.add_subparsers(dest="command", required=True, parser_class=Parser)

    def lsub(name: str, help: str) -> argparse.ArgumentParser:
        return sub(name, help, lcmds)

    acquire = lsub("acquire", "lease a READY instance")
    acquire.add_argument("--holder", required=True)
    acquire.add_argument("--duration", type=positive_seconds, help="seconds")
    acquire.add_argument("--request-id", help="idempotency key (default: random)")
    acquire.add_argument("--wait", type=positive_seconds, help="wait up to N s for capacity")
    acquire.add_argument(
        "--timeout",
        type=positive_float,
        default=ACQUIRE_TIMEOUT_S,
        help=f"seconds for the pool's answer (beyond --wait; default {ACQUIRE_TIMEOUT_S:g})",
    )
    acquire.set_defaults(func=cmd_acquire)
    renew = lsub("renew", "extend a lease")
    renew.add_argument("lease_id")
    renew.add_argument("--duration", type=positive_seconds, help="seconds from now")
    renew.set_defaults(func=cmd_renew)
    release = lsub("release", "end a lease (idempotent)")
    release.add_argument("lease_id")
    release.set_defaults(func=cmd_release)
    show = lsub("show", "show a lease")
    show.add_argument("lease_id")
    show.set_defaults(func=cmd_show)
