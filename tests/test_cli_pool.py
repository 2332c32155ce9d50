"""`starter.py pool ...` and `lease ...` as the operator runs them: processes, exit codes, output.

One pool (min_ready 1, max_slots 1) on the dev server with an in-process worker and the
simulator goes through the whole operator flow; the impossible requests are asked of that same
pool, so each must fail with one line and change nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, assert_no_orphans
from tests.integration.conftest import stack_factory as stack_factory  # pytest fixture, reused
from tests.test_cli import FAST_ENV, Run, address_of, cli, environment, unique_pool

pytestmark = pytest.mark.integration


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
