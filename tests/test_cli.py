"""`starter.py` as the operator runs it: a separate process, its exit codes and its output.

Errors are one line on stderr (no traceback): 1 for a runtime failure, 2 for a usage or settings
error or a request that cannot be done as asked (something that does not exist included).
The slot flow runs against the session dev server with an in-process worker and the simulator;
the CLI configures the slot from its own environment, so that path is exercised end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.integration.conftest import Stack, assert_no_orphans
from tests.integration.conftest import stack_factory as stack_factory  # pytest fixture, reused
from warmpool.labels import slot_workflow_id
from warmpool.models import SlotInput

pytestmark = pytest.mark.integration

STARTER = Path(__file__).resolve().parent.parent / "starter.py"
CLI_TIME_LIMIT_S = 60
OURS = ("WARMPOOL_", "WARM_POOL_", "COMFYUI_", "TOKEN_", "SSH_", "VASTAI_", "TEMPORAL_")
FAST_ENV = {
    # The names operators use; the same fast timings as tests/integration/conftest.py FAST.
    "WARM_POOL_POLL_ACTIVE_INTERVAL_MS": "200",
    "WARM_POOL_POLL_IDLE_INTERVAL_MS": "500",
    "WARM_POOL_POLL_INTERVAL_MS": "500",
    "COMFYUI_KEEPALIVE_INTERVAL_MS": "200",
    "COMFYUI_KEEPALIVE_TIMEOUT_MS": "500",
    "COMFYUI_KEEPALIVE_MAX_FAILURES": "3",
    "WARMPOOL_READINESS_INITIAL_S": "0.2",
    "WARMPOOL_READINESS_MAX_S": "1",
    "WARMPOOL_READINESS_TIMEOUT_S": "15",
    "WARMPOOL_PROVISION_TIMEOUT_S": "30",
    "WARMPOOL_FATAL_GRACE_S": "1",
    "WARMPOOL_RETRY_BACKOFF_INITIAL_S": "0.2",
    "WARMPOOL_RETRY_BACKOFF_MAX_S": "1",
    "WARMPOOL_TCP_TIMEOUT_S": "0.5",
    "WARMPOOL_HTTP_TIMEOUT_S": "1",
    "WARMPOOL_MIN_DIRECT_PORTS": "2",
    "WARMPOOL_MIN_INET_DOWN": "0",
    "WARMPOOL_MIN_RELIABILITY": "0",
    "WARMPOOL_MAX_DPH": "5",
}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def one_error_line(self) -> str:
        """The operator sees exactly one line, and never a traceback."""
        assert self.stdout == "", self.stdout
        lines = self.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        return lines[0]


def environment(address: str, **extra: str) -> dict[str, str]:
    """The caller's environment without any of our settings, plus the dev server's address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    return {**env, "TEMPORAL_ADDRESS": address, **extra}


async def cli(env: dict[str, str], cwd: Path, *args: str) -> Run:
    """Run starter.py without blocking the loop: the in-process worker must keep running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STARTER),
        *args,
        env=env,
        cwd=cwd,  # a directory without a .env
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(CLI_TIME_LIMIT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def address_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


def unique_pool() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


async def test_status_of_an_unknown_slot_is_one_line_and_exit_2(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    pool = unique_pool()
    run = await cli(environment(address_of(dev_env)), tmp_path, "slot", "status", "--pool", pool)
    assert run.code == 2
    assert f"warmpool/{pool}/slot-0" in run.one_error_line()


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["slot", "start", "--index", "-1"], "--index"),
        (["slot", "start", "--index", "two"], "--index"),
        (["slot", "status", "--pool", "Bad Name"], "invalid pool name"),
        (["slot", "frobnicate"], "invalid choice"),
        (["pool-party"], "invalid choice"),
        ([], "required"),
    ],
    ids=[
        "negative-index",
        "non-integer-index",
        "bad-pool",
        "unknown-command",
        "unknown-group",
        "none",
    ],
)
async def test_bad_arguments_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], mentions: str
) -> None:
    run = await cli(environment("127.0.0.1:1"), tmp_path, *args)
    assert run.code == 2
    assert mentions in run.one_error_line()


async def test_a_bad_setting_names_the_variable_and_exits_2(tmp_path: Path) -> None:
    env = environment("127.0.0.1:1", WARM_POOL_POLL_ACTIVE_INTERVAL_MS="fast")
    run = await cli(env, tmp_path, "slot", "status")
    assert run.code == 2
    assert "WARM_POOL_POLL_ACTIVE_INTERVAL_MS" in run.one_error_line()


async def test_unreachable_temporal_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = await cli(environment(f"127.0.0.1:{port}"), tmp_path, "slot", "status")
    assert run.code == 1
    assert "cannot reach Temporal" in run.one_error_line()


async def test_start_status_retire_against_a_worker(stack_factory: Any, tmp_path: Path) -> None:
    stack: Stack = await stack_factory()
    env = environment(address_of(stack.env), WARMPOOL_TASK_QUEUE=stack.queue, **FAST_ENV)
    pool = unique_pool()
    slot = ["--pool", pool, "--index", "3"]

    start = await cli(env, tmp_path, "slot", "start", *slot, "--wait-ready", "--timeout", "20")
    assert start.code == 0, start.stderr
    assert f"started warmpool/{pool}/slot-3" in start.stdout
    assert f"READY http://{stack.sim.config.public_ip}:" in start.stdout

    status = await cli(env, tmp_path, "slot", "status", *slot, "--json")
    assert status.code == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["state"] == "READY"
    assert shown["workflow_id"] == f"warmpool/{pool}/slot-3"
    assert shown["connection_url"] in start.stdout
    assert shown["instance"]["label"] == f"wp.{pool}.3.1"

    retire = await cli(
        env, tmp_path, "slot", "retire", *slot, "--wait", "--json", "--timeout", "20"
    )
    assert retire.code == 0, retire.stderr
    assert json.loads(retire.stdout)["state"] == "DONE"
    assert_no_orphans(stack.sim)


async def test_starting_a_running_slot_again_is_one_line_and_exit_2(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """No worker needed: the slot only has to exist when the operator starts it twice."""
    pool = unique_pool()
    handle: WorkflowHandle[Any, Any] = await dev_env.client.start_workflow(
        "WarmSlotWorkflow",
        SlotInput(pool=pool, index=0),
        id=slot_workflow_id(pool, 0),
        task_queue=f"no-worker-{pool}",
    )
    try:
        run = await cli(environment(address_of(dev_env)), tmp_path, "slot", "start", "--pool", pool)
        assert run.code == 2
        assert f"warmpool/{pool}/slot-0" in run.one_error_line()
    finally:
        await handle.terminate("test over")
