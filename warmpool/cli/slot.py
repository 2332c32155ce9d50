"""What can an operator do with one slot? `slot start|status|wait|retire|list|logs`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from warmpool import names
from warmpool import search_attributes as sa
from warmpool.cli.common import (
    USAGE,
    CliError,
    Parser,
    emit,
    existing_pool,
    human_seconds,
    json_flag,
    pool_name,
    pool_option,
    seconds,
    slot_index,
    temporal_trouble,
)
from warmpool.clients import slot as slot_client
from warmpool.labels import slot_workflow_id
from warmpool.models import SlotInput, SlotState, SlotStatus
from warmpool.settings import Settings

SLOT_WORKFLOW = names.Slot.WORKFLOW


def _ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def environment_rows(status: SlotStatus) -> list[tuple[str, str]]:
    """While the environment installs: what the provisioning log says it is doing, and what the
    last check of `/object_info` and `/models/<folder>` found missing (INSTALLING)."""
    rows = []
    if status.env_progress:
        rows.append(("provisioning", status.env_progress))
    if status.env_missing and status.state == SlotState.INSTALLING:
        rows.append(("missing", ", ".join(status.env_missing)))
    return rows


def render_slot(status: SlotStatus) -> str:
    inst = status.instance
    rows = [
        ("slot", status.workflow_id),
        ("state", f"{status.state.value} (since {_ago(status.state_since)})"),
        ("attempt", str(status.attempt)),
        ("instance", f"{inst.id} on machine {inst.machine_id}" if inst else "-"),
        ("status", f"{inst.actual_status} / {inst.status_msg}" if inst else "-"),
        ("address", f"{inst.public_ip} ports {inst.ports}" if inst else "-"),
        (
            "direct ports",
            f"{inst.direct_port_start}-{inst.direct_port_end}" if inst else "-",
        ),
        ("price", f"${inst.dph_total}/h" if inst and inst.dph_total is not None else "-"),
        ("image", status.image_used or "-"),
        ("environment", status.environment_version or "-"),
        *environment_rows(status),
        ("url", status.connection_url or "-"),
        ("lease", f"{status.lease.lease_id} by {status.lease.holder}" if status.lease else "-"),
        ("time to ready", f"{status.time_to_ready_s:.1f}s" if status.time_to_ready_s else "-"),
        ("last failure", status.last_failure or "-"),
        ("blocked", status.blocked_reason or "-"),
        ("logs", status.log_error or f"{len(status.log_tail)} lines kept (slot logs)"),
        (
            "counters",
            ", ".join(f"{k}={v}" for k, v in status.counters.model_dump().items()),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("transitions:")
    for t in status.transitions[-10:]:
        lines.append(f"  {t.at:%H:%M:%S}  {t.to_state.value:<16} {t.reason}")
    return "\n".join(lines)


def no_such_slot(pool: str, index: int) -> CliError:
    return CliError(
        f"slot {index} of pool {pool} ({slot_workflow_id(pool, index)}) does not exist: "
        f"see `warmpool slot list --pool {pool}`",
        USAGE,
    )


async def slot_status(client: Client, pool: str, index: int) -> SlotStatus:
    try:
        status = await slot_client.status(client, pool, index)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise no_such_slot(pool, index) from None
        raise temporal_trouble(exc, f"slot {slot_workflow_id(pool, index)}") from None
    return status


async def slot_running(client: Client, pool: str, index: int) -> bool:
    """True while the slot runs, False once it finished; a slot never started is an error."""
    try:
        described = await slot_client.slot_handle(client, pool, index).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise no_such_slot(pool, index) from None
        raise temporal_trouble(exc, f"slot {slot_workflow_id(pool, index)}") from None
    return described.status in (None, WorkflowExecutionStatus.RUNNING)


async def cmd_slot_start(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    wf_id = slot_workflow_id(args.pool, args.index)
    try:
        await client.start_workflow(
            SLOT_WORKFLOW,
            SlotInput(pool=args.pool, index=args.index, config=settings.slot_config()),
            id=wf_id,
            task_queue=settings.task_queue,
            search_attributes=sa_for(args.pool),
        )
    except WorkflowAlreadyStartedError:
        raise CliError(f"slot {wf_id} is already running", USAGE) from None
    except RPCError as exc:
        raise temporal_trouble(exc, f"cannot start {wf_id}") from None
    emit(args, {"workflow_id": wf_id, "started": True}, f"started {wf_id}")
    if args.wait_ready:
        await wait_ready(client, args)


def sa_for(pool: str) -> TypedSearchAttributes:
    """Set at start so a slot is listed by pool before its first transition."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(sa.POOL_NAME, pool),
            SearchAttributePair(sa.SLOT_STATE, "PREFLIGHT"),
            SearchAttributePair(sa.INSTANCE_ID, 0),
        ]
    )


async def wait_ready(client: Client, args: argparse.Namespace) -> None:
    deadline = asyncio.get_running_loop().time() + args.timeout
    while True:
        status = await slot_status(client, args.pool, args.index)
        if status.connection_url and status.state.value in ("READY", "LEASED"):
            emit(args, status.model_dump(mode="json"), f"READY {status.connection_url}")
            return
        if status.state.value in ("BLOCKED", "DONE"):
            raise CliError(f"slot is {status.state.value}: {status.blocked_reason or ''}")
        if asyncio.get_running_loop().time() > deadline:
            raise CliError(
                f"slot {status.workflow_id} not READY after {human_seconds(args.timeout)} "
                f"(state {status.state.value})"
            )
        await asyncio.sleep(0.5)


async def cmd_slot_status(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    status = await slot_status(client, args.pool, args.index)
    emit(args, status.model_dump(mode="json"), render_slot(status))


async def cmd_slot_wait(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    await wait_ready(client, args)


async def cmd_slot_retire(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Idempotent: a finished slot is already retired."""
    wf_id = slot_workflow_id(args.pool, args.index)
    handle = slot_client.slot_handle(client, args.pool, args.index)
    if not await slot_running(client, args.pool, args.index):
        emit(args, {"workflow_id": wf_id, "finished": True}, f"slot {wf_id} has already finished")
        return
    try:
        await slot_client.retire(handle, args.reason)
    except RPCError as exc:
        raise temporal_trouble(exc, f"cannot retire {wf_id}") from None
    if not args.wait:
        emit(args, {"workflow_id": wf_id, "retiring": True}, f"retiring {wf_id}")
        return
    try:
        final = await asyncio.wait_for(handle.result(), args.timeout)
    except TimeoutError:
        raise CliError(f"{wf_id} still retiring after {human_seconds(args.timeout)}") from None
    emit(args, final.model_dump(mode="json"), f"retired {wf_id}: {final.state.value}")


async def cmd_slot_resume(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """Wake a BLOCKED slot now (after its token was fixed), instead of at its next re-check."""
    wf_id = slot_workflow_id(args.pool, args.index)
    if not await slot_running(client, args.pool, args.index):
        emit(
            args,
            {"workflow_id": wf_id, "finished": True},
            f"slot {wf_id} has finished: nothing to resume",
        )
        return
    handle = slot_client.slot_handle(client, args.pool, args.index)
    try:
        await handle.signal(names.Slot.RESUME)
    except RPCError as exc:
        raise temporal_trouble(exc, f"cannot resume {wf_id}") from None
    emit(
        args,
        {"workflow_id": wf_id, "signal": names.Slot.RESUME},
        f"slot {wf_id}: resume sent (a BLOCKED slot checks its tokens again now)",
    )


async def _ever_had_slots(client: Client, pool: str) -> bool:
    """Whether any slot, running or finished, ever carried this pool's name."""
    query = f"WorkflowType = '{SLOT_WORKFLOW}' AND {sa.POOL_NAME.name} = '{pool}'"
    try:
        return (await client.count_workflows(query)).count > 0
    except RPCError as exc:
        raise temporal_trouble(exc, "cannot list slots") from None


async def cmd_slot_list(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    query = f"WorkflowType = '{SLOT_WORKFLOW}' AND ExecutionStatus = 'Running'"
    if args.pool:
        query += f" AND {sa.POOL_NAME.name} = '{args.pool}'"
    if args.state:
        query += f" AND {sa.SLOT_STATE.name} = '{args.state.upper()}'"
    rows = []
    try:
        async for wf in client.list_workflows(query):
            attrs = wf.typed_search_attributes
            rows.append(
                {
                    "workflow_id": wf.id,
                    "state": attrs.get(sa.SLOT_STATE),
                    "instance_id": attrs.get(sa.INSTANCE_ID),
                    "running": wf.status == WorkflowExecutionStatus.RUNNING,
                }
            )
    except RPCError as exc:
        raise temporal_trouble(exc, "cannot list slots") from None
    if args.pool and not rows and not await _ever_had_slots(client, args.pool):
        # Slots started on their own (`slot start`) have no pool workflow; a name with
        # neither is a mistake worth saying so.
        await existing_pool(client, args.pool)
    human = "\n".join(
        f"{r['workflow_id']:<36} {r['state'] or '-':<16} {r['instance_id'] or '-'}" for r in rows
    )
    where = f" in pool {args.pool}" if args.pool else ""
    emit(args, rows, human or f"no running slots{where}")


def poll_interval(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0.05 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.05 and 3600 seconds, got {value}")
    return seconds


def new_log_lines(status: SlotStatus, shown_total: int | None) -> tuple[int, list[str]]:
    """Lines of the tail not shown yet, and how many newer-than-shown lines the tail dropped.

    `log_lines_total` counts every line ever kept, so the difference to what was shown says how
    many are new even though the tail is bounded.
    """
    tail = status.log_tail
    if shown_total is None:
        return 0, list(tail)
    new = status.log_lines_total - shown_total
    if new <= 0:
        return 0, []
    return max(0, new - len(tail)), tail[-new:]


def progress_line(status: SlotStatus) -> str:
    """The provisioning's latest state, after the log lines it comes from."""
    return f"[{status.state.value}] {status.env_progress}"


def _print_lines(args: argparse.Namespace, status: SlotStatus, shown_total: int | None) -> None:
    dropped, lines = new_log_lines(status, shown_total)
    first = status.log_lines_total - len(lines) + 1
    if args.json:
        for n, line in enumerate(lines, start=first):
            print(json.dumps({"n": n, "line": line}), flush=True)
        return
    if dropped:
        print(f"[{dropped} lines not shown: the slot keeps the last {len(status.log_tail)}]")
    for line in lines:
        print(line, flush=True)


async def cmd_slot_logs(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    """The provisioning log tail the slot collected over SSH; `--follow` polls for new lines."""
    pool = args.pool_arg or args.pool
    index = args.index if args.index_arg is None else args.index_arg
    status = await slot_status(client, pool, index)
    if not args.follow:
        payload = {
            "workflow_id": status.workflow_id,
            "state": status.state.value,
            "lines": status.log_tail,
            "lines_total": status.log_lines_total,
            "log_error": status.log_error,
            "progress": status.env_progress,
        }
        text = "\n".join(status.log_tail) or f"no log lines ({status.state.value})"
        if status.env_progress:
            text += f"\n{progress_line(status)}"
        emit(args, payload, text)
        if status.log_error and not args.json:
            print(status.log_error, file=sys.stderr)
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)  # Ctrl-C ends the follow with exit 0
    try:
        await _follow(client, args, pool, index, status, stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _follow(
    client: Client,
    args: argparse.Namespace,
    pool: str,
    index: int,
    status: SlotStatus,
    stop: asyncio.Event,
) -> None:
    shown: int | None = None
    error: str | None = None
    progress: str | None = None
    while True:
        _print_lines(args, status, shown)
        shown = status.log_lines_total
        if status.env_progress and status.env_progress != progress:
            text = progress_line(status)
            print(json.dumps({"progress": status.env_progress}) if args.json else text, flush=True)
        progress = status.env_progress
        if status.log_error != error and status.log_error:
            print(status.log_error, file=sys.stderr, flush=True)
        error = status.log_error
        if status.state == SlotState.DONE:
            return
        try:
            await asyncio.wait_for(stop.wait(), args.interval)
            return
        except TimeoutError:
            pass
        status = await slot_status(client, pool, index)


def register(groups: argparse._SubParsersAction[Parser]) -> None:
    slot = groups.add_parser(
        "slot",
        help="one slot: status, logs, resume (after fixing a token), retire, list",
        description="A slot is one rented instance's state machine (warmpool/<pool>/slot-<k>).",
    )
    cmds = slot.add_subparsers(dest="command", required=True, parser_class=Parser)

    def with_slot(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help, description=help)
        pool_option(p)
        p.add_argument(
            "--index",
            type=slot_index,
            default=0,
            metavar="K",
            help="the slot's index in its pool (default %(default)s)",
        )
        json_flag(p)
        return p

    def timeout(p: argparse.ArgumentParser, default: float, what: str) -> None:
        p.add_argument(
            "--timeout",
            type=seconds,
            default=default,
            metavar="SECONDS",
            help=f"seconds to wait {what} before failing with exit 1 (default {default:g})",
        )

    start = with_slot("start", "start a slot workflow on its own, outside any pool's control")
    start.add_argument(
        "--wait-ready", action="store_true", help="wait until READY (default: return at once)"
    )
    timeout(start, 600.0, "for READY with --wait-ready")
    start.set_defaults(func=cmd_slot_start)
    with_slot("status", "show a slot: state, instance, lease, transitions").set_defaults(
        func=cmd_slot_status
    )
    wait = with_slot("wait", "wait until a slot is READY")
    timeout(wait, 600.0, "for READY")
    wait.set_defaults(func=cmd_slot_wait)
    resume = with_slot("resume", "wake a BLOCKED slot now (after fixing its token)")
    resume.set_defaults(func=cmd_slot_resume)
    retire = with_slot("retire", "destroy the slot's instance and finish the slot")
    retire.add_argument(
        "--reason",
        default="operator retire",
        help="recorded in the slot's transitions (default '%(default)s')",
    )
    retire.add_argument(
        "--wait",
        action="store_true",
        help="wait until the instance is destroyed (default: return at once)",
    )
    timeout(retire, 300.0, "for the retirement with --wait")
    retire.set_defaults(func=cmd_slot_retire)
    logs = with_slot(
        "logs",
        "the provisioning log tail the slot collected over SSH, then the environment's progress "
        "(which model downloads, how far) when there is one",
    )
    logs.add_argument("pool_arg", nargs="?", type=pool_name, metavar="POOL", help="or --pool")
    logs.add_argument("index_arg", nargs="?", type=slot_index, metavar="INDEX", help="or --index")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="print new lines until Ctrl-C (default: off)"
    )
    logs.add_argument(
        "--interval",
        type=poll_interval,
        default=1.0,
        metavar="SECONDS",
        help="seconds between polls with --follow (default %(default)s)",
    )
    logs.set_defaults(func=cmd_slot_logs)
    listing = cmds.add_parser(
        "list",
        help="running slots, from their search attributes",
        description="running slots, from their search attributes",
    )
    pool_option(listing, required_default=False)
    listing.add_argument(
        "--state", metavar="STATE", help="only slots in this state, e.g. READY (default: any)"
    )
    json_flag(listing)
    listing.set_defaults(func=cmd_slot_list, pool_default=False)
