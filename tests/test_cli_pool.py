"""`starter.py pool ...` and `lease ...` as the operator runs them: processes, exit codes, output.

One pool (min_ready 1, max_slots 1) on the dev server with an in-process worker and the
simulator goes through the whole operator flow; the impossible requests are asked of that same
pool, so each must fail with one line and change nothing. The scaling flags are parsed in
process first (no server): what `pool start` configures and what `pool resize` asks.
"""

from __future__ import annotations

import json
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, assert_no_orphans
from tests.integration.conftest import stack_factory as stack_factory  # pytest fixture, reused
from tests.test_cli import FAST_ENV, Run, address_of, cli, environment, unique_pool
from warmpool.cli import build_parser
from warmpool.cli.common import USAGE, CliError, floor_period
from warmpool.cli.pool import check_resize, resize_request, scaling_policy
from warmpool.models import WEEKDAYS, FloorPeriod, PoolConfig, ScalingPolicy
from warmpool.pool_core import resized
from warmpool.scaling import period_text

# ---- the scaling flags, parsed in process ------------------------------------------------------


def parsed(*argv: str) -> Any:
    """argv as `warmpool` parses and checks it before connecting (a CliError if refused)."""
    args = build_parser().parse_args(list(argv))
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    return args


def refused(*argv: str) -> str:
    with pytest.raises(CliError) as error:
        parsed(*argv)
    assert error.value.code == USAGE
    return str(error.value)


def test_pool_start_defaults_are_the_policy_defaults() -> None:
    policy = scaling_policy(parsed("pool", "start"))
    assert policy == ScalingPolicy()
    assert (policy.buffer, policy.stopped_target, policy.timezone) == (1, 0, "UTC")
    assert policy.scale_down_delay == timedelta(seconds=600)
    assert policy.park_after == timedelta(seconds=300)
    assert policy.schedule == []


def test_pool_start_builds_the_scaling_policy_from_its_flags() -> None:
    args = parsed(
        "pool", "start", "--min-ready", "0", "--max-slots", "6", "--buffer", "2",
        "--scale-down-delay", "900", "--schedule", "mon-fri 08:00-20:00=4",
        "--schedule", "sat,sun 10:00-16:00=1", "--timezone", "Europe/Paris",
        "--stopped-target", "2", "--park-after", "120",
    )  # fmt: skip
    policy = scaling_policy(args)
    assert policy.buffer == 2 and policy.stopped_target == 2
    assert policy.scale_down_delay == timedelta(minutes=15)
    assert policy.park_after == timedelta(minutes=2)
    assert policy.timezone == "Europe/Paris"
    assert [period_text(p) for p in policy.schedule] == [
        "mon-fri 08:00-20:00=4",
        "sat,sun 10:00-16:00=1",
    ]
    PoolConfig(min_ready=0, max_slots=6, scaling=policy)  # the pool takes it as it is


@pytest.mark.parametrize(
    ("spec", "days", "start", "end", "floor"),
    [
        ("mon-fri 08:00-20:00=4", WEEKDAYS[:5], time(8), time(20), 4),
        ("sat,sun 10:00-16:30=1", ("sat", "sun"), time(10), time(16, 30), 1),
        ("daily 22:00-06:00=2", WEEKDAYS, time(22), time(6), 2),
        ("* 00:00-24:00=3", WEEKDAYS, time(0), time(0), 3),
        ("07:00-09:00=5", WEEKDAYS, time(7), time(9), 5),
        ("fri-mon 18:00-9:00=0", ("mon", "fri", "sat", "sun"), time(18), time(9), 0),
        ("  MON,wed-thu   8:05-12:00 = 2 ", ("mon", "wed", "thu"), time(8, 5), time(12), 2),
    ],
)
def test_a_schedule_period_is_days_hours_and_a_floor(
    spec: str, days: tuple[str, ...], start: time, end: time, floor: int
) -> None:
    period = floor_period(spec)
    assert period == FloorPeriod(days=list(days), start=start, end=end, floor=floor)
    assert floor_period(period_text(period)) == period, "shown as it is typed"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("monday 08:00-20:00=4", "unknown days 'monday'"),
        ("mon-fri-sat 08:00-20:00=4", "unknown days 'mon-fri-sat'"),
        ("mon,,fri 08:00-20:00=4", "unknown days ''"),
        ("mon-fri 8am-20:00=4", "bad time '8am'"),
        ("mon-fri 08:00-25:00=4", "bad time '25:00'"),
        ("mon-fri 08:60-20:00=4", "bad time '08:60'"),
        ("mon-fri 24:00-06:00=4", "bad time '24:00'"),
        ("mon-fri 08:00=4", "bad hours '08:00'"),
        ("mon-fri 08:00-08:00=4", "empty hours '08:00-08:00'"),
        ("mon-fri 08:00-20:00=many", "bad floor 'many'"),
        ("mon-fri 08:00-20:00=-1", "bad floor '-1'"),
        ("mon-fri 08:00-20:00=20000", "bad floor '20000'"),
        ("mon-fri 08:00-20:00", "expected DAYS HH:MM-HH:MM=FLOOR"),
        ("mon fri 08:00-20:00=4", "expected DAYS HH:MM-HH:MM=FLOOR"),
        ("=4", "expected DAYS HH:MM-HH:MM=FLOOR"),
    ],
)
def test_a_bad_schedule_names_its_bad_part_and_exits_2(spec: str, says: str) -> None:
    for command in ("start", "resize"):
        message = refused("pool", command, "--schedule", spec)
        assert "--schedule" in message and says in message, message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--timezone", "Europe/Pariss"], "unknown time zone 'Europe/Pariss'"),
        (["--timezone", "../etc/passwd"], "unknown time zone"),
        (["--timezone", ""], "unknown time zone"),
        (["--buffer", "-1"], "--buffer"),
        (["--buffer", "one"], "whole number"),
        (["--stopped-target", "1.5"], "whole number"),
        (["--scale-down-delay", "-1"], "--scale-down-delay"),
        (["--scale-down-delay", "soon"], "expected seconds"),
        (["--park-after", "inf"], "finite number"),
        (["--park-after", "1e12"], "at most"),
    ],
)
def test_bad_scaling_values_exit_2_on_start_and_resize(argv: list[str], says: str) -> None:
    for command in ("start", "resize"):
        assert says in refused("pool", command, *argv)


def test_zero_delays_and_scale_to_zero_are_allowed() -> None:
    args = parsed(
        "pool", "start", "--min-ready", "0", "--buffer", "0", "--scale-down-delay", "0",
        "--park-after", "0", "--timezone", "America/New_York",
    )  # fmt: skip
    policy = scaling_policy(args)
    assert policy.buffer == 0 and policy.scale_down_delay == timedelta(0)
    assert policy.timezone == "America/New_York"


def test_a_scheduled_floor_above_max_slots_is_refused_like_min_ready() -> None:
    message = refused("pool", "start", "--max-slots", "3", "--schedule", "mon-fri 08:00-20:00=4")
    assert message == "--schedule 'mon-fri 08:00-20:00=4': floor 4 exceeds --max-slots 3"
    assert "exceeds --max-slots 2" in refused(
        "pool", "resize", "--max-slots", "2", "--schedule", "daily 08:00-20:00=3"
    )


def test_resize_with_nothing_to_change_says_so() -> None:
    assert "nothing to change" in refused("pool", "resize")
    assert "nothing to change" in refused("pool", "resize", "--pool", "p")


def test_resize_asks_only_what_was_given() -> None:
    request = resize_request(parsed("pool", "resize", "--buffer", "0"))
    assert request.scaling_changes() == {"buffer": 0} and request.config_changes() == {}
    request = resize_request(
        parsed(
            "pool",
            "resize",
            "--scale-down-delay",
            "60",
            "--park-after",
            "30",
            "--stopped-target",
            "1",
            "--timezone",
            "Asia/Tokyo",
            "--schedule",
            "mon-fri 09:00-18:00=3",
            "--schedule",
            "sat 10:00-12:00=1",
        )  # fmt: skip
    )
    assert request.scaling_changes() == {
        "scale_down_delay": timedelta(seconds=60),
        "park_after": timedelta(seconds=30),
        "stopped_target": 1,
        "timezone": "Asia/Tokyo",
        "schedule": [floor_period("mon-fri 09:00-18:00=3"), floor_period("sat 10:00-12:00=1")],
    }
    assert not request.clear_budget and request.budget_dph is None


def test_resize_no_schedule_removes_it_and_cannot_come_with_one() -> None:
    request = resize_request(parsed("pool", "resize", "--no-schedule"))
    assert request.schedule == [] and request.scaling_changes() == {"schedule": []}
    scheduled = PoolConfig(
        scaling=ScalingPolicy(schedule=[floor_period("daily 08:00-20:00=2")], buffer=3)
    )
    after = resized(scheduled, request)
    assert after.scaling.schedule == [] and after.scaling.buffer == 3, "the rest is unchanged"
    assert "not allowed with" in refused(
        "pool", "resize", "--no-schedule", "--schedule", "daily 08:00-20:00=2"
    )


def test_the_pool_applies_a_resize_of_its_policy() -> None:
    """What `pool resize` sends is what `pool_core.resized` (the update's validator) takes."""
    args = parsed(
        "pool", "resize", "--min-ready", "0", "--buffer", "2", "--timezone", "Europe/Paris",
        "--schedule", "mon-fri 08:00-20:00=3", "--no-budget",
    )  # fmt: skip
    check_resize(args)
    after = resized(PoolConfig(budget_dph=5.0), resize_request(args))
    assert after.min_ready == 0 and after.budget_dph is None and after.max_slots == 4
    assert after.scaling.buffer == 2 and after.scaling.timezone == "Europe/Paris"
    assert after.scaling.scale_down_delay == ScalingPolicy().scale_down_delay


# ---- against a dev server ----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["pool", "start", "--min-ready", "-1"], "--min-ready"),
        (["pool", "start", "--min-ready", "3", "--max-slots", "2"], "exceeds --max-slots"),
        (["pool", "resize", "--budget", "-2"], "--budget"),
        (["lease", "acquire", "--holder", "a", "--duration", "-5"], "--duration"),
        (["lease", "acquire", "--holder", "a", "--duration", "soon"], "--duration"),
        (["lease", "acquire"], "--holder"),
        (["lease", "renew"], "lease_id"),
    ],
    ids=[
        "negative-min-ready",
        "min-ready-above-max",
        "negative-budget",
        "negative-duration",
        "non-numeric-duration",
        "no-holder",
        "no-lease-id",
    ],
)
async def test_bad_pool_and_lease_arguments_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], mentions: str
) -> None:
    run = await cli(environment("127.0.0.1:1"), tmp_path, *args)
    assert run.code == 2
    assert mentions in run.one_error_line()


@pytest.mark.integration
async def test_operator_flow_of_a_pool_and_its_leases(stack_factory: Any, tmp_path: Path) -> None:
    stack: Stack = await stack_factory()
    env = environment(address_of(stack.env), WARMPOOL_TASK_QUEUE=stack.queue, **FAST_ENV)
    pool = ["--pool", unique_pool()]

    async def ok(*args: str) -> Run:
        run = await cli(env, tmp_path, *args)
        assert run.code == 0, run.stderr
        return run

    async def refused(*args: str, code: int = 2) -> str:
        """Impossible requests exit 2; a runtime failure (no capacity now) 1."""
        run = await cli(env, tmp_path, *args)
        assert run.code == code, run
        return run.one_error_line()

    await ok("pool", "start", *pool, "--min-ready", "1", "--max-slots", "1")
    assert "already running" in await refused("pool", "start", *pool)
    ready = await ok("pool", "wait", *pool, "--ready", "1", "--timeout", "30")
    assert "READY" in ready.stdout and "idle READY 1" in ready.stdout

    grant = json.loads(
        (
            await ok("--json", "lease", "acquire", *pool, "--holder", "ana", "--duration", "600")
        ).stdout
    )
    assert grant["connection_url"].startswith(f"http://{stack.sim.config.public_ip}:")
    assert "no capacity" in await refused("lease", "acquire", *pool, "--holder", "bo", code=1)
    too_long = await refused("lease", "acquire", *pool, "--holder", "bo", "--duration", "999999")
    assert "maximum lease of 28800 s (8h)" in too_long and "days," not in too_long
    assert "exceeds max_slots" in await refused("pool", "resize", *pool, "--min-ready", "5")
    assert "unknown lease" in await refused("lease", "renew", *pool, "no-such-lease")
    assert "unknown lease" in await refused("lease", "show", *pool, "no-such-lease")

    renewed = json.loads(
        (
            await ok("--json", "lease", "renew", *pool, grant["lease_id"], "--duration", "1200")
        ).stdout
    )
    assert renewed["leased_until"] > grant["leased_until"]
    shown = await ok("lease", "show", *pool, grant["lease_id"])
    assert "ana: active" in shown.stdout

    status = json.loads((await ok("--json", "pool", "status", *pool)).stdout)
    assert status["config"] == {**status["config"], "min_ready": 1, "max_slots": 1}
    assert [lease["holder"] for lease in status["active_leases"]] == ["ana"]
    assert status["counts"] == {"LEASED": 1}
    assert status["scaling"]["target"] == 1 and status["scaling"]["warm"] == 1
    assert status["costs"]["spend_per_hour_by_tier"]["leased"] > 0

    policy = json.loads(
        (
            await ok(
                "--json",
                "pool",
                "resize",
                *pool,
                "--buffer",
                "0",
                "--scale-down-delay",
                "0",
                "--schedule",
                "mon-fri 08:00-20:00=1",
                "--timezone",
                "Europe/Paris",
            )  # fmt: skip
        ).stdout
    )["config"]["scaling"]
    assert policy["buffer"] == 0 and policy["timezone"] == "Europe/Paris"
    assert policy["schedule"] == [
        {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00:00", "end": "20:00:00",
         "floor": 1}
    ]  # fmt: skip
    text = (await ok("pool", "status", *pool)).stdout
    policy_line = "policy: buffer 0, floor min_ready 1 + schedule mon-fri 08:00-20:00=1"
    assert f"{policy_line} (Europe/Paris)" in text, text
    assert "tiers: READY 0 " in text and "leased 1 $" in text and "costs since " in text
    unscheduled = await ok("--json", "pool", "resize", *pool, "--no-schedule")
    assert json.loads(unscheduled.stdout)["config"]["scaling"]["schedule"] == []

    released = await ok("lease", "release", *pool, grant["lease_id"])
    assert "ended (released)" in released.stdout
    again = await ok("--json", "lease", "release", *pool, grant["lease_id"])
    assert json.loads(again.stdout)["end_reason"] == "released", "release is idempotent"

    drained = await ok("pool", "drain", *pool, "--wait", "--timeout", "30")
    assert "drained" in drained.stdout
    again_drained = await ok("pool", "drain", *pool, "--wait")
    assert "has finished (drained" in again_drained.stdout, "drain is idempotent"
    assert "nothing to resume" in (await ok("pool", "resume", *pool)).stdout
    finished = await ok("pool", "status", *pool)
    assert "FINISHED" in finished.stdout and "draining" not in finished.stdout
    ended = await ok("lease", "release", *pool, grant["lease_id"])
    assert "ended (released)" in ended.stdout, "release is idempotent on a finished pool"
    assert_no_orphans(stack.sim)
