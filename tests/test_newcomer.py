"""The first hour, as a newcomer lives it: the CLI's exit codes and one-line errors, and the run
command started twice and stopped at any moment.

- A table of bad invocations (no server needed, then against a dev server with no worker):
  each exits as the contract says (0 / 2 bad or impossible request / 1 runtime failure) with one
  line on stderr in the product's words: no traceback, no exception class, no Python repr.
- A reader that stops early (a closed pipe) ends a command quietly.
- The run command (`scripts/devstack.py`, what `scripts/run.sh` execs) with short settings:
  started, stopped with SIGINT, started again (it reuses the pool), and the CLI's idempotent
  commands against its stack; then killed with SIGTERM during start-up: nothing left listening.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.test_cli import Run, address_of, cli, environment, unique_pool

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "starter.py"
LEAKS = re.compile(
    r"Traceback|\b[A-Z]\w*(Error|Exception)\b|\bdays?, \d+:\d\d:\d\d|invalid \w+ value: |"
    r"workflow execution already completed|Namespace\("
)


def one_clean_line(run: Run) -> str:
    line = run.one_error_line()
    assert not LEAKS.search(run.stderr), run.stderr
    return line


# ---- no server needed --------------------------------------------------------------------------

OFFLINE = [
    # (argv, exit code, a phrase of the one line)
    (["pool", "resize"], 2, "nothing to change"),
    (["pool", "resize", "--min-ready", "5", "--max-slots", "3"], 2, "exceeds --max-slots"),
    (["pool", "resize", "--budget", "2", "--no-budget"], 2, "not allowed with"),
    (["pool", "start", "--min-ready", "3", "--max-slots", "2"], 2, "exceeds --max-slots"),
    (["lease", "acquire", "--holder", "a", "--duration", "nan"], 2, "finite number"),
    (["lease", "acquire", "--holder", "a", "--duration", "inf"], 2, "finite number"),
    (["lease", "acquire", "--holder", "a", "--duration", "1e12"], 2, "at most"),
    (["lease", "acquire", "--holder", "a", "--duration", "-5"], 2, "--duration"),
    (["pool", "wait", "--timeout", "soon"], 2, "expected seconds"),
    (["pool", "start", "--budget", "nan"], 2, "finite number"),
    (["pool", "start", "--max-slots", "1e3"], 2, "whole number"),
    (["pool", "start", "--schedule", "monday 08:00-20:00=4"], 2, "unknown days 'monday'"),
    (["pool", "resize", "--schedule", "mon-fri 8am-20:00=4"], 2, "bad time '8am'"),
    (["pool", "start", "--schedule", "mon-fri 08:00-20:00"], 2, "DAYS HH:MM-HH:MM=FLOOR"),
    (["pool", "start", "--max-slots", "2", "--schedule", "daily 08:00-20:00=3"], 2, "exceeds"),
    (["pool", "resize", "--no-schedule", "--schedule", "daily 08:00-20:00=1"], 2, "not allowed"),
    (["pool", "start", "--timezone", "Mars/Olympus"], 2, "unknown time zone 'Mars/Olympus'"),
    (["pool", "resize", "--buffer", "-1"], 2, "--buffer"),
    (["pool", "start", "--stopped-target", "many"], 2, "whole number"),
    (["pool", "start", "--scale-down-delay", "soon"], 2, "expected seconds"),
    (["pool", "resize", "--park-after", "-5"], 2, "--park-after"),
    (["slot", "status", "--pool", "Bad Name"], 2, "invalid pool name"),
    (["reaper", "run", "nope", "--pool", "other"], 2, "two pools"),
    (["reaper", "run", "--grace", "forever"], 2, "duration like"),
    (["lease"], 2, "required"),
    (["pool-party"], 2, "invalid choice"),
    (["pool", "set-env"], 2, "required: --file"),
    (["pool", "set-env", "--file", "missing.yaml"], 2, "missing.yaml: cannot read"),
    (["pool", "set-env", "--file", "env.txt"], 2, "must end in .yaml, .yml or .json"),
    (["pool", "start", "--environment", "missing.json"], 2, "missing.json: cannot read"),
    (["pool", "start", "--max-surge", "0"], 2, "between 1 and 100"),
    (["lease", "acquire", "--holder", "a", "--min-environment", "v2"], 2, "env-"),
    (["lease", "acquire", "--holder", "a", "--node-class", " x"], 2, "node class name"),
]


@pytest.mark.slow  # a CLI process per case: the full suite, not the fast lane
@pytest.mark.parametrize(("argv", "code", "says"), OFFLINE, ids=[" ".join(a) for a, *_ in OFFLINE])
async def test_bad_invocations_exit_2_with_one_line(
    tmp_path: Path, argv: list[str], code: int, says: str
) -> None:
    run = await cli(environment("127.0.0.1:1"), tmp_path, *argv)
    assert run.code == code, run
    assert says in one_clean_line(run)


@pytest.mark.slow  # a CLI process per case: the full suite, not the fast lane
async def test_a_bad_default_pool_is_a_setting_error(tmp_path: Path) -> None:
    run = await cli(
        environment("127.0.0.1:1", WARMPOOL_POOL="Not A Pool"), tmp_path, "pool", "status"
    )
    assert run.code == 2
    assert "WARMPOOL_POOL" in one_clean_line(run)


@pytest.mark.slow  # a CLI process per case: the full suite, not the fast lane
async def test_unreachable_temporal_is_a_runtime_failure(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = await cli(environment(f"127.0.0.1:{port}"), tmp_path, "pool", "status")
    assert run.code == 1
    assert "cannot reach Temporal" in one_clean_line(run)


def run_into_closed_pipe(env: dict[str, str], cwd: Path, *argv: str) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reader is already gone (`| head -1` at its worst)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, str(STARTER), *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            timeout=60,
            text=True,
        )
    finally:
        os.close(write)
    return done.returncode, done.stderr


@pytest.mark.slow  # a CLI process per case: the full suite, not the fast lane
def test_help_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    code, err = run_into_closed_pipe(environment("127.0.0.1:1"), tmp_path, "--help")
    assert code == 0 and err == "", err


def test_help_teaches_every_group_and_option() -> None:
    from warmpool.cli import build_parser

    parser = build_parser()
    text = parser.format_help()
    for group in ("pool", "lease", "slot", "tokens", "reaper"):
        assert re.search(rf"^\s+{group}\s+\S", text, re.M), group
    assert "examples:" in text and "exit codes:" in text
    undocumented = []
    for action in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for sub in action._subparsers._group_actions[0].choices.values():
            for option in sub._actions:
                if option.option_strings and option.help in (None, ""):
                    undocumented.append(f"{sub.prog} {option.option_strings[0]}")
            assert any("--pool" in o.option_strings for o in sub._actions) or "tokens" in sub.prog
    assert undocumented == []


# ---- against a dev server, no worker -------------------------------------------------------------


async def test_what_does_not_exist_is_an_error_with_exit_2(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = environment(address_of(dev_env))
    pool = unique_pool()
    cases = [
        (["pool", "status", "--pool", pool], "does not exist"),
        (["pool", "drain", "--pool", pool], "does not exist"),
        (["pool", "resume", "--pool", pool], "does not exist"),
        (["pool", "resize", "--pool", pool, "--min-ready", "1"], "does not exist"),
        (["lease", "release", "--pool", pool, "some-lease"], "does not exist"),
        (["slot", "list", "--pool", pool], "does not exist"),
        (["slot", "status", "--pool", pool, "--index", "3"], "does not exist"),
        (["slot", "resume", "--pool", pool], "does not exist"),
    ]
    for argv, says in cases:
        run = await cli(env, tmp_path, *argv)
        assert run.code == 2, (argv, run)
        assert says in one_clean_line(run), argv
    defaulted = await cli({**env, "WARMPOOL_POOL": pool}, tmp_path, "pool", "status")
    assert defaulted.code == 2 and f"pool {pool} does not exist" in defaulted.stderr


# ---- the run command -----------------------------------------------------------------------------

FAST_RUN_ENV = {
    "WARM_POOL_POLL_ACTIVE_INTERVAL_MS": "300",
    "WARM_POOL_POLL_IDLE_INTERVAL_MS": "1000",
    "WARMPOOL_READINESS_INITIAL_S": "0.2",
    "WARMPOOL_READINESS_MAX_S": "1",
    "WARMPOOL_RETRY_BACKOFF_INITIAL_S": "0.2",
    "WARMPOOL_RETRY_BACKOFF_MAX_S": "1",
}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RunCommand:
    """`scripts/devstack.py` with its own ports and state directory and short timings."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.temporal, self.ui, self.gateway = free_ports(3)
        self.env = {
            **environment(f"127.0.0.1:{self.temporal}"),
            **FAST_RUN_ENV,
            "WARMPOOL_POOL": "newcomer",
        }
        self.proc: subprocess.Popen[str] | None = None
        self.output = state / "out.txt"

    @property
    def ports(self) -> list[int]:
        return [self.temporal, self.ui, self.gateway]

    def start(self) -> None:
        self.output.write_text("")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "devstack.py"),
                f"--temporal-port={self.temporal}",
                f"--ui-port={self.ui}",
                f"--gateway-port={self.gateway}",
                f"--state-dir={self.state}",
                "--min-ready=1",
                "--max-slots=2",
                "--sim-speed=5",
                "--ready-timeout=120",
            ],
            stdout=self.output.open("w"),
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
            text=True,
        )

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, phrase: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            text = self.text()
            if phrase in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"the run command exited ({self.proc.returncode}):\n{text}")
            time.sleep(0.2)
        raise AssertionError(f"no {phrase!r} within {timeout:.0f}s:\n{self.text()}")

    def stop(self, sig: int, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code

    def assert_nothing_left(self) -> None:
        left = [port for port in self.ports if listening(port)]
        assert left == [], f"still listening after the run command stopped: {left}"
        assert not (self.state / "run.json").exists()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGTERM)


@pytest.fixture
def run_command(tmp_path: Path) -> Iterator[RunCommand]:
    command = RunCommand(tmp_path / "state")
    command.state.mkdir()
    try:
        yield command
    finally:
        command.kill()


def starter(env: dict[str, str], *argv: str) -> Run:
    done = subprocess.run(
        [sys.executable, str(STARTER), *argv],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        text=True,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_run_command_twice_reuses_the_pool_and_stops_cleanly(
    run_command: RunCommand,
) -> None:
    run_command.start()
    first = run_command.wait_for("running; Ctrl-C to stop", 180)
    for shown in (
        f"Web UI http://127.0.0.1:{run_command.ui}",
        f"http://127.0.0.1:{run_command.gateway}",
        "admin key     : devstack-admin-key",
        "Vast.ai API key",
        "control URL",
        "started pool newcomer",
        "warmpool pool status",
        "warmpool lease acquire",
        "curl",
    ):
        assert shown in first, shown
    assert run_command.stop(signal.SIGINT) == 128 + signal.SIGINT
    run_command.assert_nothing_left()

    run_command.start()
    second = run_command.wait_for("running; Ctrl-C to stop", 180)
    assert "reusing pool newcomer, already running" in second, second
    assert "Traceback" not in second

    # The CLI against the stack: existence, idempotence, broken pipes, finished pools.
    env = run_command.env
    nope = starter(env, "reaper", "run", "--pool", "nope", "--dry-run")
    assert nope.code == 2 and "pool nope does not exist" in one_clean_line(nope)
    code, err = run_into_closed_pipe(env, ROOT, "pool", "status")
    assert code == 0 and err == "", err
    again = starter(env, "pool", "start", "--min-ready", "1", "--max-slots", "2")
    assert again.code == 2 and "already running" in one_clean_line(again)
    unknown = starter(env, "lease", "release", "no-such-lease")
    assert unknown.code == 2 and "unknown lease" in one_clean_line(unknown)
    assert starter(env, "pool", "drain", "--wait", "--timeout", "60").code == 0
    for argv in (["pool", "drain", "--wait"], ["pool", "resume"], ["pool", "drain"]):
        done = starter(env, *argv)
        assert done.code == 0, (argv, done)
        assert "has finished" in done.stdout and done.stderr == "", done
    status = starter(env, "--json", "pool", "status")
    assert status.code == 0 and json.loads(status.stdout)["finished"] is True
    human = starter(env, "pool", "status")
    assert "FINISHED" in human.stdout and "draining" not in human.stdout
    resize = starter(env, "pool", "resize", "--min-ready", "1")
    assert resize.code == 2 and "has finished" in one_clean_line(resize)

    assert run_command.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    run_command.assert_nothing_left()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_sigterm_during_start_up_leaves_nothing_listening(run_command: RunCommand) -> None:
    run_command.start()
    deadline = time.monotonic() + 60
    while not listening(run_command.temporal):  # Temporal is up; the rest is starting
        assert time.monotonic() < deadline, run_command.text()
        time.sleep(0.1)
    assert run_command.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    run_command.assert_nothing_left()
    assert "stopping everything" in run_command.text()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_the_run_command_refuses_a_port_in_use(run_command: RunCommand) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", run_command.gateway))
        taken.listen()
        run_command.start()
        assert run_command.proc is not None
        code = await asyncio.to_thread(run_command.proc.wait, 60)
    assert code == 1
    assert f"port {run_command.gateway} is in use" in run_command.text()
    run_command.assert_nothing_left()
