"""What does every CLI command share? Errors, argument types, output and the Temporal client.

The exit-code contract (README "The operator CLI"): 0 success, including a request that was
already satisfied (release of an ended lease, drain of a finished pool); 2 a bad argument or
setting, or a request that cannot be done as asked (unknown pool, slot or lease; min_ready
above max_slots; a duration over the pool's maximum; nothing to change); 1 a runtime failure
(Temporal unreachable, no capacity now, a wait that ran out). Every error is one line on stderr
in the product's words.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from warmpool.environment import (
    DEFAULT_ONSTART,
    Environment,
    EnvironmentFileError,
    EnvironmentTooLarge,
    check_fits,
    load_environment,
)
from warmpool.errors import ErrorType
from warmpool.labels import pool_workflow_id, validate_pool_name
from warmpool.models import WEEKDAYS, FloorPeriod, PoolStatus, Weekday
from warmpool.settings import Settings

USAGE = 2
"""Exit status of a bad argument or setting, or of a request that cannot be done as asked."""
FAILURE = 1
"""Exit status of a runtime failure."""
PROG = "warmpool"


class CliError(Exception):
    """A one-line error for the operator; `code` is the exit status."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see --help)", code=USAGE)


Command = Callable[[Client, Settings, argparse.Namespace], Awaitable[None]]
Subparsers = "argparse._SubParsersAction[Parser]"


# ---- argument types (each raises ArgumentTypeError: argparse then names the option) -----------


def pool_name(value: str) -> str:
    try:
        return validate_pool_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def slot_index(value: str) -> int:
    try:
        index = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"slot index must be an integer, got {value!r}") from None
    if not 0 <= index < 10_000:
        raise argparse.ArgumentTypeError(f"slot index must be between 0 and 9999, got {index}")
    return index


MAX_SECONDS = 366 * 86400.0
"""The longest duration or timeout any command takes: a year."""


def _finite(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number of {what}, got {value!r}")
    return number


def seconds(value: str) -> float:
    """A positive number of seconds, at most a year (a timeout, a wait)."""
    number = _finite(value, "seconds")
    if not 0 < number <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_SECONDS:.0f} seconds (a year), got {value}"
        )
    return number


def positive_seconds(value: str) -> timedelta:
    """A positive duration in seconds, at most a year."""
    return timedelta(seconds=seconds(value))


def positive_float(value: str) -> float:
    number = _finite(value, "a number")
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 0 <= number <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10000, got {number}")
    return number


def non_negative_seconds(value: str) -> timedelta:
    """A duration in seconds, 0 included (at once), at most a year."""
    number = _finite(value, "seconds")
    if not 0 <= number <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be at least 0 and at most {MAX_SECONDS:.0f} seconds (a year), got {value}"
        )
    return timedelta(seconds=number)


def time_zone(value: str) -> str:
    """An IANA time zone name (`Europe/Paris`, `UTC`), as this machine's zone database knows it."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise argparse.ArgumentTypeError(
            f"unknown time zone {value!r}: expected an IANA name such as Europe/Paris or UTC"
        ) from None
    return value


_ENV_VERSION = re.compile(r"env-[0-9a-f]{12}")


def env_version(value: str) -> str:
    """An environment version as `pool status` shows it: `env-` and 12 hex characters."""
    if not _ENV_VERSION.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"expected an environment version such as env-5a7c1245b1c5 ('env-' and 12 hex "
            f"characters, as `pool status` shows it), got {value!r}"
        )
    return value


def node_class(value: str) -> str:
    """A ComfyUI node class name: not blank, no control characters, at most 200 characters."""
    if not value.strip() or value != value.strip() or len(value) > 200:
        raise argparse.ArgumentTypeError(
            f"expected a node class name such as FaceDetailer (no surrounding spaces, at most "
            f"200 characters), got {value!r}"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise argparse.ArgumentTypeError("a node class name has no control characters")
    return value


def environment_file(path: str, *, onstart: str = DEFAULT_ONSTART) -> Environment:
    """Read, validate and size an environment file (`pool set-env`, `pool start --environment`):
    every problem of the file is a line naming it and the field, exit 2; so is an environment
    too large for a rent request."""
    try:
        env = load_environment(Path(path))
    except EnvironmentFileError as exc:
        raise CliError("\n".join(exc.problems), USAGE) from None
    fits(env, path, onstart=onstart)
    return env


def fits(env: Environment, path: str, *, onstart: str = DEFAULT_ONSTART) -> None:
    """The environment fits a rent request with this `onstart`, or an error (2) saying why."""
    try:
        check_fits(env, onstart=onstart)
    except EnvironmentTooLarge as exc:
        raise CliError(f"{path}: too large for a rent request: {exc}", USAGE) from None


SCHEDULE_FORM = "DAYS HH:MM-HH:MM=FLOOR, e.g. 'mon-fri 08:00-20:00=4'"
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")


def _days(text: str, spec: str) -> list[Weekday]:
    """`mon-fri`, `sat,sun`, `mon,wed-fri`, `daily` or `*`, in week order."""
    chosen: set[Weekday] = set()
    for part in text.lower().split(","):
        if part in ("daily", "*"):
            chosen.update(WEEKDAYS)
            continue
        ends = part.split("-")
        unknown = [end for end in ends if end not in WEEKDAYS]
        if len(ends) > 2 or unknown or not part:
            raise argparse.ArgumentTypeError(
                f"unknown days {part!r} in {spec!r}: use mon..sun, a range like mon-fri, a list "
                "like sat,sun, or daily (or *)"
            )
        first = WEEKDAYS.index(ends[0])
        last = WEEKDAYS.index(ends[-1])
        span = (last - first) % 7
        chosen.update(WEEKDAYS[(first + k) % 7] for k in range(span + 1))
    return [day for day in WEEKDAYS if day in chosen]


def _clock(text: str, spec: str, *, end: bool) -> time:
    """`HH:MM` on a 24-hour clock; `24:00` as an end is midnight."""
    match = _CLOCK.match(text)
    hour, minute = (int(match[1]), int(match[2])) if match else (-1, -1)
    if end and (hour, minute) == (24, 0):
        return time(0, 0)
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise argparse.ArgumentTypeError(
            f"bad time {text!r} in {spec!r}: expected HH:MM on a 24-hour clock, e.g. 08:00"
        )
    return time(hour, minute)


def floor_period(value: str) -> FloorPeriod:
    """`DAYS HH:MM-HH:MM=FLOOR` (`pool start --schedule`): from start to end on those days (an
    end at or before the start runs past midnight), the floor is FLOOR. DAYS may be left out
    (every day)."""
    spec = " ".join(value.split())
    times_part, equals, floor_text = spec.rpartition("=")
    words = times_part.split()
    if not equals or len(words) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected {SCHEDULE_FORM}, got {value!r}")
    days = _days(words[0], spec) if len(words) == 2 else list(WEEKDAYS)
    start_text, dash, end_text = words[-1].partition("-")
    if not dash:
        raise argparse.ArgumentTypeError(
            f"bad hours {words[-1]!r} in {spec!r}: expected HH:MM-HH:MM, e.g. 08:00-20:00"
        )
    start = _clock(start_text, spec, end=False)
    end = _clock(end_text, spec, end=True)
    if start == end and end_text != "24:00":
        raise argparse.ArgumentTypeError(
            f"empty hours {words[-1]!r} in {spec!r}: a whole day is 00:00-24:00"
        )
    try:
        floor = count(floor_text.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"bad floor {floor_text.strip()!r} in {spec!r}: expected a whole number of slots "
            "from 0 to 10000"
        ) from None
    return FloorPeriod(days=days, start=start, end=end, floor=floor)


def human_seconds(value: float | timedelta) -> str:
    """`90s`, `10m`, `1.5h`, `2d`: never Python's `1 day, 2:03:04`."""
    total = value.total_seconds() if isinstance(value, timedelta) else value
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            return f"{total / size:.4g}{unit}"
    return f"{total:.4g}s"


# ---- options shared by every group -------------------------------------------------------------


POOL_HELP = "the pool (default: $WARMPOOL_POOL, else 'default')"


def pool_option(parser: argparse.ArgumentParser, *, required_default: bool = True) -> None:
    """`--pool NAME`; the default is resolved from the settings (`WARMPOOL_POOL`) at run time."""
    parser.add_argument(
        "--pool",
        type=pool_name,
        default=None,
        metavar="NAME",
        help=POOL_HELP if required_default else "only this pool (default: every pool)",
    )


def json_flag(parser: argparse.ArgumentParser) -> None:
    """`--json` accepted after the subcommand too (the top-level flag is the default)."""
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print machine-readable JSON instead of text",
    )


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(human)


# ---- what Temporal said, in the product's words ------------------------------------------------


def refusal(exc: WorkflowUpdateFailedError | ApplicationError | BaseException) -> CliError:
    """A workflow's refusal of an update: no capacity now is a runtime failure (1), anything
    else (unknown lease, a duration over the maximum, min_ready above max_slots) an impossible
    request (2). Only the message is shown, never the error's type."""
    cause = exc.cause if isinstance(exc, WorkflowUpdateFailedError) else exc
    if isinstance(cause, ApplicationError):
        code = FAILURE if cause.type == ErrorType.NO_CAPACITY else USAGE
        return CliError(cause.message, code)
    return CliError(str(cause) or "refused", USAGE)


def temporal_trouble(exc: RPCError, what: str) -> CliError:
    """An RPC that failed for a reason other than "not found": a runtime failure."""
    return CliError(f"{what}: Temporal answered {exc.message or exc.status.name.lower()}")


PoolPhase = Literal["running", "finished", "absent"]


@dataclass
class PoolRun:
    """Where a pool workflow stands: running, finished (and how), or never started."""

    pool: str
    phase: PoolPhase
    how: str = ""
    closed_at: datetime | None = None

    def finished_line(self) -> str:
        when = f" at {self.closed_at:%Y-%m-%d %H:%M:%S} UTC" if self.closed_at else ""
        return f"pool {self.pool} has finished ({self.how}{when})"


def start_hint(pool: str) -> str:
    return f"start it with `warmpool pool start --pool {pool}`"


async def pool_run(client: Client, pool: str) -> PoolRun:
    try:
        described = await client.get_workflow_handle(pool_workflow_id(pool)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return PoolRun(pool, "absent")
        raise temporal_trouble(exc, f"pool {pool}") from None
    if described.status in (None, WorkflowExecutionStatus.RUNNING):
        return PoolRun(pool, "running")
    how = {
        WorkflowExecutionStatus.COMPLETED: "drained",
        WorkflowExecutionStatus.TERMINATED: "terminated",
        WorkflowExecutionStatus.CANCELED: "cancelled",
        WorkflowExecutionStatus.FAILED: "failed",
        WorkflowExecutionStatus.TIMED_OUT: "timed out",
    }.get(described.status, described.status.name.lower())
    return PoolRun(pool, "finished", how, described.close_time)


def no_such_pool(pool: str) -> CliError:
    return CliError(f"pool {pool} does not exist: {start_hint(pool)}", USAGE)


async def existing_pool(client: Client, pool: str) -> PoolRun:
    """The pool's run; a pool that was never started is an error (2)."""
    run = await pool_run(client, pool)
    if run.phase == "absent":
        raise no_such_pool(pool)
    return run


async def final_status(client: Client, pool: str) -> PoolStatus | None:
    """A finished pool's last status (its result), or None when it ended otherwise."""
    handle = client.get_workflow_handle(pool_workflow_id(pool), result_type=PoolStatus)
    try:
        final: PoolStatus = await handle.result()
    except (WorkflowFailureError, RPCError):
        return None
    return final
