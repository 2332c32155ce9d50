"""How does an operator run or schedule the orphan reaper? `warmpool reaper schedule|run`.

The pool is `--pool NAME` as everywhere (`reaper run POOL` still works), and must exist.

- `schedule [--every 10m] [--grace 15m]` creates the Temporal Schedule
  `warmpool/<pool>/reaper` (overlap SKIP: one reaper at a time), or updates its period and
  grace when it exists, so running it again is safe.
- `run [--grace 15m] [--dry-run]` runs one reaper now and prints its report: what it
  destroyed and what that saves per hour (`--dry-run` only says what it would destroy).
"""

from __future__ import annotations

import argparse
import re
import uuid
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowFailureError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import FailureError
from temporalio.service import RPCError

from warmpool import names
from warmpool import search_attributes as sa
from warmpool.cli.common import (
    USAGE,
    CliError,
    Parser,
    emit,
    json_flag,
    no_such_pool,
    pool_name,
    pool_option,
    pool_run,
    temporal_trouble,
)
from warmpool.reaper import DEFAULT_EVERY, DEFAULT_GRACE, ReaperInput, ReaperReport, Verdict
from warmpool.settings import Settings

REAPER_WORKFLOW = names.Reaper.WORKFLOW
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str) -> timedelta:
    """`90`, `90s`, `10m`, `1.5h`, `1d`: a plain number is seconds."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 10m or 1h, got {value!r}")
    total = float(match.group(1)) * _UNITS[match.group(2)]
    if total > 366 * 86400:
        raise argparse.ArgumentTypeError(f"must be at most a year (366d), got {value!r}")
    return timedelta(seconds=total)


def schedule_id(pool: str) -> str:
    return f"warmpool/{pool}/reaper"


def reaper_schedule(pool: str, task_queue: str, every: timedelta, grace: timedelta) -> Schedule:
    pool_attribute = TypedSearchAttributes([SearchAttributePair(sa.POOL_NAME, pool)])
    return Schedule(
        action=ScheduleActionStartWorkflow(
            REAPER_WORKFLOW,
            ReaperInput(pool=pool, grace=grace),
            id=schedule_id(pool),  # the server appends the scheduled time
            task_queue=task_queue,
            typed_search_attributes=pool_attribute,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_schedule(
    client: Client, settings: Settings, pool: str, every: timedelta, grace: timedelta
) -> bool:
    """Create the pool's reaper schedule, or bring an existing one to this period and grace.

    Returns True when it was created.
    """
    schedule = reaper_schedule(pool, settings.task_queue, every, grace)
    try:
        await client.create_schedule(schedule_id(pool), schedule)
        return True
    except ScheduleAlreadyRunningError:
        pass

    def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(schedule_id(pool)).update(replace)
    return False


def _human(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def render_report(report: ReaperReport) -> str:
    orphans = report.orphans
    if report.dry_run:
        would = sum(d.candidate.dph_total or 0.0 for d in orphans)
        outcome = f"dry run, would save ${would:.4f}/h"
    else:
        outcome = f"destroyed {len(report.destroyed)}, saves ${report.saved_per_hour:.4f}/h"
    lines = [
        f"reaper {report.pool}: {report.listed} labelled instance(s), {len(orphans)} orphan(s), "
        f"{outcome} (grace {_human(report.grace)})"
    ]
    stopped = {d.candidate.instance_id for d in report.decisions if d.candidate.stopped}
    for reaped in report.destroyed:
        gone = " (already gone)" if reaped.already_gone else ""
        disk = " stopped (disk only)" if reaped.instance_id in stopped else ""
        lines.append(
            f"  destroyed {reaped.instance_id} {reaped.label} ${reaped.dph_total:.4f}/h{disk}{gone}"
        )
    for failure in report.failed:
        lines.append(f"  FAILED    {failure.instance_id} {failure.label}: {failure.error}")
    for d in report.decisions:
        if d.verdict == Verdict.ORPHAN and not report.dry_run:
            continue
        c = d.candidate
        state = " [stopped]" if c.stopped else ""
        lines.append(f"  {d.verdict.value:<14} {c.instance_id} {c.label}{state}: {d.reason}")
    return "\n".join(lines)


async def cmd_schedule(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    if args.every <= timedelta(0):
        raise CliError("--every must be positive", USAGE)
    # No check that the pool exists: a deployment schedules its reaper before the pool starts.
    try:
        created = await ensure_schedule(client, settings, args.pool, args.every, args.grace)
    except RPCError as exc:
        raise temporal_trouble(exc, f"cannot schedule the reaper of pool {args.pool}") from None
    what = "created" if created else "updated"
    emit(
        args,
        {
            "schedule_id": schedule_id(args.pool),
            "every_s": args.every.total_seconds(),
            "grace_s": args.grace.total_seconds(),
            "created": created,
        },
        f"schedule {schedule_id(args.pool)} {what}: every {_human(args.every)}, "
        f"grace {_human(args.grace)}",
    )


async def cmd_run(client: Client, settings: Settings, args: argparse.Namespace) -> None:
    request = ReaperInput(pool=args.pool, grace=args.grace, dry_run=args.dry_run)
    try:
        report = await client.execute_workflow(
            REAPER_WORKFLOW,
            request,
            id=f"{schedule_id(args.pool)}-run-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
            result_type=ReaperReport,
            execution_timeout=args.timeout,
        )
    except WorkflowFailureError as exc:
        cause: BaseException | None = exc.cause
        while isinstance(cause, FailureError) and cause.cause is not None:
            cause = cause.cause
        why = getattr(cause, "message", None) or str(cause or exc)
        raise CliError(f"the reaper of pool {args.pool} failed: {why}") from None
    except RPCError as exc:
        raise temporal_trouble(exc, f"cannot run the reaper of pool {args.pool}") from None
    if report.listed == 0 and (await pool_run(client, args.pool)).phase == "absent":
        # Nothing labelled for it and never started: a typo, not a clean pool.
        raise no_such_pool(args.pool)
    emit(args, report.model_dump(mode="json"), render_report(report))


def register(groups: argparse._SubParsersAction[Parser]) -> None:
    reaper = groups.add_parser(
        "reaper",
        help="find and destroy instances no live slot owns (orphans)",
        description="The orphan reaper destroys labelled instances of a pool that no live "
        "slot owns, after a grace period.",
    )
    cmds = reaper.add_subparsers(dest="command", required=True, parser_class=Parser)

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help, description=help)
        pool_option(p)
        p.add_argument(
            "pool_arg", nargs="?", type=pool_name, metavar="POOL", help="the same as --pool"
        )
        p.add_argument(
            "--grace",
            type=duration,
            default=DEFAULT_GRACE,
            metavar="DURATION",
            help="an unowned instance younger than this is kept; 90, 90s, 10m, 1h, 1d "
            f"(default {_human(DEFAULT_GRACE)})",
        )
        json_flag(p)
        return p

    schedule = sub("schedule", "create or update the pool's reaper schedule (idempotent)")
    schedule.add_argument(
        "--every",
        type=duration,
        default=DEFAULT_EVERY,
        metavar="DURATION",
        help=f"how often the reaper runs (default {_human(DEFAULT_EVERY)})",
    )
    schedule.set_defaults(func=cmd_schedule)
    run = sub("run", "run the reaper once now and print its report")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="report orphans, destroy nothing (default: destroy them)",
    )
    run.add_argument(
        "--timeout",
        type=duration,
        default=timedelta(minutes=10),
        metavar="DURATION",
        help="give up on the run after this long, exit 1 (default 10m)",
    )
    run.set_defaults(func=cmd_run)
